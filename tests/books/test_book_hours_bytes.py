"""The bytes of a many-stream ``book_snapshot`` hour are pinned: the books, the end state, every
version and the proof of two chained hours (and the rebuild a late part causes) are exactly those
the stream-at-a-time build wrote before the hour was read and written in bulk (digests computed
with that code). Spot and USD-M streams with the same names, breaks, REST snapshots received after
the events they bridge and re-bases, partial snapshots that match and some that do not, a stream
that never syncs until a late part (its tail carried), a stream with snapshots but no diff events.

Every REST snapshot of a stream has its own id: two with the same id and different levels (say,
different limits) are read in no defined order, so which one counts is not fixed by either build."""

from __future__ import annotations

import gc
import hashlib
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from orderbook_core.buffer.hours import HOUR_US, hour_folder

from orderbook_assets.archive.store import LocalStore
from orderbook_assets.books.hour import Settings, build_hour
from orderbook_assets.derived import book_hours
from orderbook_assets.derived.book_hours import materialize_from, materialize_hour
from support.book_tables import REST_SCHEMA, Part, Rest, Upd, empty, partial, rest, updates

H = 1_795_514_400_000_000
S = 1_000_000
SETTINGS = Settings(depth=5, interval_us=10 * S)


def put(root: Path, dataset: str, table: pa.Table, hour_us: int, name: str) -> None:
    folder = root / dataset / hour_folder(hour_us)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)


class Exchange:
    """One symbol's true book on one market, and what the exchange sends about it."""

    def __init__(self, rng: random.Random, market: str, symbol: str, first_id: int):
        self.rng, self.market, self.symbol, self.u = rng, market, symbol, first_id
        self.mid = mid = rng.randrange(100, 200)
        self.bids = {float(mid - k): float(rng.randrange(1, 9)) for k in range(1, 30)}
        self.asks = {float(mid + k): float(rng.randrange(1, 9)) for k in range(1, 30)}

    def _side(self, side: dict, bid: bool) -> list[tuple[float, float]]:
        return sorted(side.items(), reverse=bid)

    def diff(self, t: int, skip: bool = False) -> Upd:
        rng = self.rng
        changes = ([], [])
        for side, out, sign in ((self.bids, changes[0], -1), (self.asks, changes[1], 1)):
            for _ in range(rng.randrange(0, 4)):  # each side on its side of a fixed mid: never crossed
                p = rng.choice(list(side)) if side and rng.random() < 0.5 else float(self.mid + sign * rng.randrange(1, 40))
                q = 0.0 if rng.random() < 0.3 else float(rng.randrange(1, 9))
                if q:
                    side[p] = q
                else:
                    side.pop(p, None)
                out.append((p, q))
        if skip:
            self.u += 5  # ids the recorder never saw: a break
        pu = self.u
        first = self.u + 1
        self.u = first + rng.randrange(0, 3)
        return Upd(t, first, self.u, changes[0], changes[1], pu=pu if self.market == "usdm" else None)

    def rest(self, t: int, limit: int | None, reason: str = "connect") -> Rest:
        bids, asks = self._side(self.bids, True), self._side(self.asks, False)
        n = limit or 6  # no limit recorded: the sides' depth is the horizon
        return Rest(t, self.u, bids[:n], asks[:n], reason, limit)

    def part(self, t: int, n: int, wrong: bool = False) -> Part:
        bids, asks = self._side(self.bids, True)[:n], self._side(self.asks, False)[:n]
        if wrong:
            bids[1] = (bids[1][0], bids[1][1] + 0.5)
        return Part(t, self.u, bids, asks)


def archive_hours(a: Path, rng: random.Random) -> Rest:
    """Two hours of eight symbols' diff depth on two markets (see the module); returns a REST
    snapshot of the never synced stream taken inside the first hour, not archived (a late part)."""
    ex = {f"{m}:{s}": Exchange(rng, m, s, 1_000 * (i + 1))
          for i, (m, s) in enumerate([(m, s) for m in ("spot", "usdm") for s in ("AAAUSDT", "BBBUSDT", "CCCUSDT",
                                                                                  "DDDUSDT")])}
    for h in (H, H + HOUR_US):
        for name, e in ex.items():
            ups, rests, parts = [], [], []
            silent = name == "spot:DDDUSDT"  # snapshots, no diff events
            never = name == "usdm:CCCUSDT"  # diff events, no snapshot: never synced
            t = h + rng.randrange(1, 5) * S
            if not silent and not never and h == H:
                rests.append(e.rest(t + 3 * S, rng.choice([None, 20, 1000])))  # received after what it bridges
            for k in range(rng.randrange(150, 260)):
                t += rng.randrange(1, 30) * S // 2
                if t >= h + HOUR_US:
                    break
                ev = e.diff(t, skip=k % 97 == 96 and not never)
                if not silent:  # its book moves, its events are not in the archive
                    ups.append(ev)
                if not never and k % 97 == 96:
                    rests.append(e.rest(t + 2 * S, 1000, "resync"))  # bridges the break
                if not never and k % 61 == 30:
                    rests.append(e.rest(t + S // 3, 20, "rebase"))
                if never and h == H and k == 100:
                    late = e.rest(t + S // 2, 1000)
                if k % 7 == 3:
                    parts.append(e.part(t + 1, 5, wrong=k % 49 == 3))
            m, sym = e.market, e.symbol
            if ups:
                put(a, "depth_update", updates(ups, m, sym), h, f"part-{m}-{sym}.parquet")
            if rests:
                put(a, "depth_rest_snapshot", rest(rests, m, sym), h, f"part-{m}-{sym}.parquet")
            if parts:
                put(a, "depth_snapshot", partial(parts, m, sym, f"{sym.lower()}@depth5@100ms"), h,
                    f"part-{m}-{sym}.parquet")
    return late


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def proof_digest(built) -> str:
    p = built.proof
    return hashlib.sha256(orjson.dumps({
        "streams": [s.as_dict() for s in p.streams],
        "mismatches": [{**m._asdict(), "levels": [list(lv) for lv in m.levels]} for m in p.mismatches],
        "crossed": [c._asdict() for c in p.crossed], "rows": built.rows, "known": built.known_rows,
        "partly": built.partly_known_rows, "crossed_rows": built.crossed.count,
        "streams_built": [list(k) for k in built.streams]})).hexdigest()


def files(a: Path) -> dict[str, str]:
    return {str(p.relative_to(a)): digest(p) for p in sorted(a.rglob("*"))
            if p.is_file() and p.parts[len(a.parts)].startswith("book_")}


@pytest.mark.parametrize("batch", [book_hours.BATCH, 7])
def test_a_many_stream_hour_its_successor_and_their_rebuild_keep_their_bytes(tmp_path: Path, monkeypatch, batch):
    """With record batches of 7 rows, a stream's diff events and a symbol's partial snapshots
    span several batches (and batches hold several of them)."""
    monkeypatch.setattr(book_hours, "BATCH", batch)
    a = tmp_path / "archive"
    thresholds = gc.get_threshold()
    rng = random.Random(22)
    late = archive_hours(a, rng)
    store = LocalStore(a)
    one = materialize_hour(a, H, SETTINGS, store)
    two = materialize_hour(a, H + HOUR_US, SETTINGS, store)
    # a late part of the first hour: a REST snapshot that syncs the stream that never synced
    put(a, "depth_rest_snapshot", rest([late], "usdm", "CCCUSDT"), H, "part-late.parquet")
    rebuilt = materialize_from(a, H, SETTINGS, store)
    got = {"files": files(a), "proofs": [proof_digest(b) for b in (one, two, *rebuilt)]}
    # the hour exercises what it claims to: known, partly known and unknown rows, matches and
    # mismatches, an unproven stream, and a rebuild that carries into the next hour
    assert (one.rows, one.known_rows, one.partly_known_rows) == (2520, 2129, 11)
    assert (one.proof.comparable, one.proof.matched, one.proof.mismatched) == (195, 166, 29)
    assert [s.stream for s in one.proof.unproven] == ["cccusdt@depth@100ms"]
    assert [b.known_rows for b in rebuilt] == [2413, 2511]
    assert [b.books.replaced_sha256 for b in rebuilt] == [one.books.sha256, two.books.sha256]
    assert got == EXPECTED
    assert gc.get_threshold() == thresholds  # the build collects less often, and only while it runs



def test_rows_fed_out_of_key_order_are_sorted():
    """Streams in (market, stream) order whose symbols are not in that order: the rows come out
    in ``market, symbol, stream, time`` order all the same (and, fed in that order, as built)."""
    ups = pa.concat_tables([updates([Upd(H + 2 * S, 101, 101), Upd(H + 30 * S, 102, 102)], symbol="ZZZUSDT",
                                    stream="aaa@depth"),
                            updates([Upd(H + 5 * S, 7, 7)], symbol="AAAUSDT", stream="zzz@depth")])
    t = build_hour(H, ups, empty(REST_SCHEMA), None, SETTINGS).table
    keys = [(c, "ascending") for c in ("market", "symbol", "stream", "time")]
    assert t.num_rows == 720 and t.column("symbol")[0].as_py() == "AAAUSDT"
    assert t.equals(t.take(pc.sort_indices(t, keys)))


#: Computed with the stream-at-a-time build (main at 4cd01fb) and pyarrow 26.0.1's Parquet writer.
EXPECTED = {
    "files": {
        "book_snapshot/date=2026-11-24/hour=10/books.parquet":
            "86631917aed8179c390b963461774195746a22c77c79175d1c2030c4b3a82a3b",
        "book_snapshot/date=2026-11-24/hour=11/books.parquet":
            "b92acc033c9a621e8ec7b953548fd861d80cead4a32b5325f4fa86902e25322e",
        "book_state/date=2026-11-24/hour=10/state.json":
            "d998083165beda1954f2a31d7177bd233b32992d098d741dc39ef8e2f12bf45e",
        "book_state/date=2026-11-24/hour=11/state.json":
            "6e73885139c28513d801d9a122388c6377f47ef785cf2e0d902aba4d303eae83",
        "book_versions/book_snapshot/date=2026-11-24/hour=10/86631917aed8179c390b963461774195746a22c77c79175d1c2030c4b3a82a3b.parquet":
            "86631917aed8179c390b963461774195746a22c77c79175d1c2030c4b3a82a3b",
        "book_versions/book_snapshot/date=2026-11-24/hour=10/b98b7645421f634085d0bdc5b32eb08b819d1b5622411ba7631a2170ab020a9a.parquet":
            "b98b7645421f634085d0bdc5b32eb08b819d1b5622411ba7631a2170ab020a9a",
        "book_versions/book_snapshot/date=2026-11-24/hour=11/98358bc18948259d567b3d50f4f192b9e3e0805deac5fc1fdf7d12a0583aab80.parquet":
            "98358bc18948259d567b3d50f4f192b9e3e0805deac5fc1fdf7d12a0583aab80",
        "book_versions/book_snapshot/date=2026-11-24/hour=11/b92acc033c9a621e8ec7b953548fd861d80cead4a32b5325f4fa86902e25322e.parquet":
            "b92acc033c9a621e8ec7b953548fd861d80cead4a32b5325f4fa86902e25322e",
        "book_versions/book_state/date=2026-11-24/hour=10/b85f8181dedd323fab81a05b0f868c806fbb040f1a04a49285069142c393f802.json":
            "b85f8181dedd323fab81a05b0f868c806fbb040f1a04a49285069142c393f802",
        "book_versions/book_state/date=2026-11-24/hour=10/d998083165beda1954f2a31d7177bd233b32992d098d741dc39ef8e2f12bf45e.json":
            "d998083165beda1954f2a31d7177bd233b32992d098d741dc39ef8e2f12bf45e",
        "book_versions/book_state/date=2026-11-24/hour=11/6e73885139c28513d801d9a122388c6377f47ef785cf2e0d902aba4d303eae83.json":
            "6e73885139c28513d801d9a122388c6377f47ef785cf2e0d902aba4d303eae83",
        "book_versions/book_state/date=2026-11-24/hour=11/dbd098214b7a33a3c93fcc1c7c6a7f86ba368c5d6106dded0e7e95d2e1c920e4.json":
            "dbd098214b7a33a3c93fcc1c7c6a7f86ba368c5d6106dded0e7e95d2e1c920e4",
    },
    "proofs": [
        "f0daf2cdee96cf8fceff3c379b6a7832b62233a9ac73938ca342a26e3c35ff1d",
        "e13a2bfaeee5c595e771c9446fc2636c42da35ee2cd9d4e418dae63fbfba285e",
        "7e5d6a13cd477597a855fe8200fe317f499ee9691897138ff3d4a72f96860c04",
        "44c3eeb8cf10b42df1f4101ddade391d6ded330b88a6556574cc2ef742ffa399",
    ],
}
