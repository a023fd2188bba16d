"""The packed-levels codec: how a book side is stored in the buffer and read back.

A row's ``levels`` blob holds little-endian float64 ``(price, qty)`` pairs, the first
``n_bids`` pairs bids (best first), then the asks (best first): 16 bytes a level, exact
for up to 15 significant digits, which covers every Binance value seen.
Arrow's ``list<struct<price: double, qty: double>>`` is the archive's form of a side.
"""

from __future__ import annotations

from array import array

import numpy as np
import pyarrow as pa

from orderbook_core.errors import StorageError

PAIR_BYTES = 16
LEVEL = pa.struct([pa.field("price", pa.float64(), nullable=False), pa.field("qty", pa.float64(), nullable=False)])
LEVELS = pa.list_(pa.field("item", LEVEL, nullable=False))


def pack(pairs: np.ndarray) -> bytes:
    """An (n, 2) float64 array of bids then asks → the blob."""
    return np.ascontiguousarray(pairs, dtype="<f8").tobytes()


def unpack(levels: bytes, n_bids: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The blob → (bids, asks) as lists of (price, qty); for tests and small tools."""
    values = array("d")
    values.frombytes(levels)
    pairs = list(zip(values[0::2], values[1::2]))
    return pairs[:n_bids], pairs[n_bids:]


def to_arrow(blobs: list[bytes], n_bids: np.ndarray) -> tuple[pa.ListArray, pa.ListArray, np.ndarray]:
    """Many rows' blobs → (bids, asks) Arrow list arrays, vectorised; also the flat float64 values.

    When every row has the same shape (the usual depth20 book: 20 + 20 levels) the sides
    are plain reshapes; otherwise a mask splits them.

    Raises:
        StorageError: a blob is not whole pairs, or claims more bids than it holds.
    """
    n = len(blobs)
    n_bids = np.asarray(n_bids, dtype=np.int64)
    counts = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    if (counts % PAIR_BYTES).any():
        raise StorageError("a buffer row's levels blob is not a whole number of (price, qty) float64 pairs")
    counts //= PAIR_BYTES
    if (n_bids > counts).any() or (n_bids < 0).any():
        raise StorageError("a buffer row claims more bid levels than its levels blob holds")
    flat = np.frombuffer(b"".join(blobs), dtype="<f8")
    pairs = flat.reshape(-1, 2)
    if n and (counts == counts[0]).all() and (n_bids == n_bids[0]).all():
        book = pairs.reshape(n, int(counts[0]), 2)
        nb0 = int(n_bids[0])
        bid_vals, ask_vals = book[:, :nb0], book[:, nb0:]
    else:
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        is_bid = (np.arange(len(pairs)) - starts) < np.repeat(n_bids, counts)
        bid_vals, ask_vals = pairs[is_bid], pairs[~is_bid]
    return _side(bid_vals, n_bids, n), _side(ask_vals, counts - n_bids, n), flat


def _side(vals: np.ndarray, per_row: np.ndarray, n: int) -> pa.ListArray:
    vals = vals.reshape(-1, 2)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    price = as_arrow(np.ascontiguousarray(vals[:, 0]), pa.float64())
    qty = as_arrow(np.ascontiguousarray(vals[:, 1]), pa.float64())
    struct = pa.StructArray.from_arrays([price, qty], fields=list(LEVEL))
    return pa.ListArray.from_arrays(as_arrow(offsets, pa.int32()), struct, type=LEVELS)


def as_arrow(values: np.ndarray, type: pa.DataType) -> pa.Array:  # noqa: A002
    """A contiguous numpy array as an Arrow array without copying (and without ``pa.array``,
    whose first call imports pandas: ~0.3 s per process for nothing)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(values)])
