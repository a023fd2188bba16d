"""The writer's inbox: bounded, FIFO, wakes an idle writer, items taken past a Stop go back in order."""

import queue
import threading
import time

import pytest

from orderbook_core.buffer.records import Event
from orderbook_collector.writer.thread import Inbox


def _event(i: int) -> Event:
    return Event(i, None, None, "test", None)


def test_bounded_fifo_and_put_back() -> None:
    box = Inbox(3)
    for i in range(3):
        box.put_nowait(_event(i))
    with pytest.raises(queue.Full):
        box.put_nowait(_event(3))
    taken = box.take(10)
    assert [e.time_us for e in taken] == [0, 1, 2]
    box.put_nowait(_event(3))
    box.put_back(taken[1:])
    assert [e.time_us for e in box.take(10)] == [1, 2, 3]
    assert box.empty() and box.qsize() == 0


def test_idle_writer_wakes_on_put() -> None:
    box = Inbox(10)
    woke = threading.Event()

    def writer() -> None:
        box.wait(30.0)
        woke.set()

    t = threading.Thread(target=writer)
    started = time.monotonic()
    t.start()
    box.put_nowait(_event(0))
    assert woke.wait(10.0)
    t.join(10.0)
    assert time.monotonic() - started < 10.0
    assert box.qsize() == 1
