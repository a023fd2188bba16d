"""The buffer's single-instance lock: held until released or the holder dies."""

from __future__ import annotations

import os

import pytest

from orderbook_core.buffer.lock import BufferInUse, BufferLock


def test_a_second_holder_is_refused_with_the_first_ones_pid_until_it_releases(buffer_path):
    first = BufferLock.acquire(buffer_path)
    with pytest.raises(BufferInUse) as refused:
        BufferLock.acquire(buffer_path)
    assert f"PID {os.getpid()}" in str(refused.value) and str(refused.value).startswith("ORDERBOOK_BUFFER: ")
    first.release()
    with BufferLock.acquire(buffer_path) as again:
        assert again.held
