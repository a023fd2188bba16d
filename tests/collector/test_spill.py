"""Spill files keep order, survive restarts and torn tails, and fall back to memory."""

from __future__ import annotations

import os

from orderbook_core.buffer.records import Frame
from orderbook_collector.writer.spill import Spill


def drain(spill: Spill) -> list[Frame]:
    out = []
    while True:
        items, pos = spill.read(7)
        if not items:
            return out
        out.extend(items)
        spill.finish_if_drained(pos)


def test_items_come_back_in_order_across_segments(tmp_path):
    spill = Spill(tmp_path, segment_bytes=200)
    items = [Frame(f"frame-{i}", i, 1, i) for i in range(100)]
    for it in items:
        assert spill.append(it)
    assert len(list(tmp_path.glob("spill-*.bin"))) > 3
    assert drain(spill) == items
    assert spill.finish_if_drained(None) and not spill.active
    assert not list(tmp_path.glob("spill-*.bin"))
    spill.close()


def test_restart_resumes_after_committed_position(tmp_path):
    spill = Spill(tmp_path, segment_bytes=300)
    items = [Frame("x" * 20, i, 1, i) for i in range(40)]
    for it in items:
        spill.append(it)
    got, pos = spill.read(15)
    spill.close()  # crash: position was committed with the batch, files stay
    again = Spill(tmp_path, segment_bytes=300)
    assert again.active
    again.seek(pos)
    assert got + drain(again) == items
    again.close()


def test_torn_tail_from_a_crash_is_cut(tmp_path):
    spill = Spill(tmp_path)
    for i in range(5):
        spill.append(Frame("frame", i, 1, i))
    spill.close()
    seg = next(tmp_path.glob("spill-*.bin"))
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a record header with a missing body
    again = Spill(tmp_path)
    assert [it.recv_us for it in drain(again)] == [0, 1, 2, 3, 4]
    again.close()


def test_write_failure_holds_items_in_memory_in_order(tmp_path, monkeypatch):
    spill = Spill(tmp_path, memory_limit=10_000)
    spill.append(Frame("a", 0, 1, 0))
    real_write = os.write

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert spill.append(Frame("b", 1, 1, 1))
    assert spill.disk_error is not None
    refused = 0
    for i in range(2, 2000):
        refused += not spill.append(Frame("c" * 50, i, 1, i))
    assert refused > 0  # beyond memory_limit the caller is told, never silently dropped
    monkeypatch.setattr(os, "write", real_write)
    got = drain(spill)
    seqs = [it.recv_us for it in got]
    assert seqs[:2] == [0, 1] and seqs == sorted(seqs) and len(seqs) == 2000 - refused
    spill.close()
