"""The analysts' DuckDB views over the archive, and the not-yet-archived tail.

Everything here works on a caller's ``duckdb`` connection; nothing is global.
:func:`register_views` creates, with stable names (see DESIGN.md, "Contracts"):

``depth_snapshot_archived``  the Parquet dataset ``<archive>/depth_snapshot/``
``depth_snapshot_tail``      buffer rows no archived part covers (only with a buffer)
``depth_snapshot``           the archive, plus the tail when a buffer is given
``top_of_book``              ``symbol, recv_time, best_bid, best_bid_qty, best_ask,
                             best_ask_qty, mid, spread, microprice`` per snapshot
``coverage``                 the ``<archive>/coverage/`` dataset (sessions and gaps)
``top_of_book_1s``           the ``<archive>/top_of_book_1s/`` dataset (1-second bars)
``book_at(symbol, time)``    table macro: the last snapshot at or before ``time``

How S3 is reached: DuckDB's ``httpfs`` extension, loaded from the file the PyPI
package ``duckdb-extension-httpfs`` ships (no download from DuckDB's extension
repository), with a ``CREATE SECRET`` built by :class:`~orderbook_assets.archive.location.S3Settings`
(the archive job's own recipe: boto3 credential chain, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``).
See docs/analysts.md.

The tail is read with Python's ``sqlite3`` (DuckDB's sqlite extension is not
available offline), read-only, in one read transaction, and decoded into the
archive's shape with numpy, without per-row Python loops.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from orderbook_collector.buffer import HOUR_US, levels, reads  # noqa: F401
from orderbook_collector.errors import ArchiveError, ConfigError, StorageError

from orderbook_assets.archive import datasets
from orderbook_assets.archive.location import Location, S3Settings, hour_path

DATASET = datasets.DEPTH
DEPTH_SCHEMA = datasets.DEPTH_SCHEMA
LEVEL = datasets.LEVEL
DEPTH_COLUMNS = DEPTH_SCHEMA.names
TOP_OF_BOOK_COLUMNS = [
    "symbol", "recv_time", "best_bid", "best_bid_qty", "best_ask", "best_ask_qty",
    "mid", "spread", "microprice",
]
_DUCK_TYPES = {f.name: datasets.duckdb_type(f.type) for f in (*DEPTH_SCHEMA, *datasets.HIVE_COLUMNS)}


# --------------------------------------------------------------------------- locations and S3

# One parser of archive URLs and one S3 recipe for the whole project (archive/location.py):
# the views accept exactly the URLs the archive job writes to, and read the same settings.
Archive = Location


def httpfs_path() -> Path:
    """The httpfs extension file shipped by ``duckdb-extension-httpfs`` for this duckdb.

    Raises:
        ConfigError: the package is missing or built for another duckdb version.
    """
    try:
        import duckdb_extension_httpfs
    except ImportError as exc:
        raise ConfigError(
            "duckdb-extension-httpfs", "is not installed; install the version equal to duckdb's to read S3."
        ) from exc
    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    path = root / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.is_file():
        found = sorted(p.name for p in root.glob("v*")) if root.is_dir() else []
        raise ConfigError(
            "duckdb-extension-httpfs",
            f"ships {', '.join(found) or 'nothing'} but duckdb is v{duckdb.__version__}; install matching versions.",
        )
    return path


def configure_s3(con: duckdb.DuckDBPyConnection, archive: Archive, s3: S3Settings | None = None) -> S3Settings:
    """Load httpfs from its PyPI package and create the S3 secret for ``archive``'s bucket."""
    s3 = s3 or S3Settings.from_env()
    # Never reach for DuckDB's extension repository: it is not reachable offline.
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"LOAD {_lit(str(httpfs_path()))}")
    con.execute(s3.secret_sql(scope=f"s3://{archive.bucket}"))
    return s3


# --------------------------------------------------------------------------- the tail


def read_tail(buffer_path: str | Path) -> pa.Table:
    """Buffer rows of ``depth_snapshot`` that no *archived* export part covers.

    Per (dataset, hour): the hour's id range from ``buffer_hours`` minus the id ranges
    of its parts in state 'archived'. Read in one read transaction, so the ledger and
    the rows agree. Returned in the archive's schema (:data:`DEPTH_SCHEMA`), ordered by id.

    Raises:
        ConfigError: the buffer file does not exist.
        StorageError: it cannot be read (not a buffer, corrupt, locked for too long).
    """
    path = Path(buffer_path)
    if not path.is_file():
        raise ConfigError("ORDERBOOK_BUFFER", f"{path} does not exist; point --buffer at the collector's buffer.")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open buffer {path} read-only: {exc}") from exc
    try:
        con.execute("BEGIN")  # one snapshot for ledger and rows (WAL readers never block the writer)
        cols = "stream_id, session_id, seq, recv_us, update_id, n_bids, levels"
        rows: list[tuple] = []
        for rng in reads.unarchived(con, DATASET):
            rows += con.execute(
                f"SELECT {cols} FROM {DATASET} WHERE {reads.PART_ROWS} ORDER BY id", rng.params()
            ).fetchall()
        streams = con.execute("SELECT stream_id, name, symbol FROM streams").fetchall()
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read buffer {path}: {exc}") from exc
    finally:
        con.close()
    return decode_rows(rows, streams)


def decode_rows(rows: list[tuple], streams: list[tuple[int, str, str]]) -> pa.Table:
    """Buffer rows ``(stream_id, session_id, seq, recv_us, update_id, n_bids, levels)`` → Arrow,
    the levels through the buffer's codec (:func:`orderbook_collector.buffer.levels.to_arrow`)."""
    if not rows:
        return DEPTH_SCHEMA.empty_table()
    stream_id, session_id, seq, recv_us, update_id, n_bids, blobs = zip(*rows)
    bids, asks, _ = levels.to_arrow(list(blobs), np.asarray(n_bids, dtype=np.int64))
    ids = np.asarray(stream_id, dtype=np.int64)
    names = {sid: (name, symbol.upper()) for sid, name, symbol in streams}
    uniq, inverse = np.unique(ids, return_inverse=True)
    missing = [int(s) for s in uniq if int(s) not in names]
    if missing:
        raise StorageError(f"buffer rows refer to unknown stream ids {missing}")
    stream_col = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array([names[int(s)][0] for s in uniq])
    ).cast(pa.string())
    symbol_col = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array([names[int(s)][1] for s in uniq])
    ).cast(pa.string())
    return pa.Table.from_arrays(
        [
            symbol_col,
            stream_col,
            pa.array(np.asarray(recv_us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")),
            pa.array(np.asarray(session_id, dtype=np.int64)),
            pa.array(np.asarray(seq, dtype=np.int64)),
            pa.array(np.asarray(update_id, dtype=np.int64)),
            bids,
            asks,
        ],
        schema=DEPTH_SCHEMA,
    )


# --------------------------------------------------------------------------- the views


@dataclass
class ViewInfo:
    """What :func:`register_views` found: file counts, tail rows and notes for the user."""

    archive: Archive
    depth_files: int = 0
    coverage_files: int = 0
    tail_rows: int | None = None  # None: no buffer was read
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.depth_files == 0 and not self.tail_rows


def register_views(
    con: duckdb.DuckDBPyConnection,
    archive_url: str,
    buffer_path: str | Path | None = None,
    s3: S3Settings | None = None,
    *,
    tail: pa.Table | None = None,
) -> ViewInfo:
    """Create the analysts' views on ``con`` (see the module docstring).

    ``buffer_path`` (or an already read ``tail`` table) adds the not-yet-archived rows
    to ``depth_snapshot``; duplicates with the archive are removed by the dedup key
    (stream, last_update_id), so a part archived while we read is never counted twice.
    The tail is stored as the table ``buffer_unarchived`` on ``con``: a snapshot taken
    now (re-run to refresh). An archive without files gives empty, typed views and a note.

    Raises:
        ConfigError: bad archive URL, missing credentials or buffer, a local archive folder
            that does not exist.
        ArchiveError: S3 refused to list the archive.
    """
    archive = Archive.parse(archive_url)
    info = ViewInfo(archive)
    con.execute("SET TimeZone = 'UTC'")
    if archive.is_s3:
        configure_s3(con, archive, s3)
    elif not Path(archive.url).is_dir():
        raise ConfigError(
            "ORDERBOOK_ARCHIVE_URL",
            f"the archive folder {archive.url} does not exist; point --archive at the folder the archive job writes.",
        )
    info.depth_files = count_files(con, archive.glob(DATASET))
    info.coverage_files = count_files(con, archive.glob("coverage"))

    con.execute(f"CREATE OR REPLACE VIEW depth_snapshot_archived AS {depth_archived_sql(archive, info.depth_files)}")
    if info.depth_files == 0:
        info.notes.append(f"The archive at {archive.url} holds no depth_snapshot Parquet files yet.")
    if buffer_path is not None or tail is not None:
        tail = read_tail(buffer_path) if tail is None else tail
        info.tail_rows = tail.num_rows
        con.register("_orderbook_tail_arrow", tail)
        try:
            con.execute(
                "CREATE OR REPLACE TABLE buffer_unarchived AS "
                "SELECT *, CAST(timezone('UTC', recv_time) AS DATE) AS date, "
                "CAST(hour(timezone('UTC', recv_time)) AS INTEGER) AS hour FROM _orderbook_tail_arrow"
            )
        finally:
            con.unregister("_orderbook_tail_arrow")
        con.execute(f"CREATE OR REPLACE VIEW depth_snapshot_tail AS {tail_sql(_tail_hours(con))}")
        con.execute(
            "CREATE OR REPLACE VIEW depth_snapshot AS "
            "SELECT * FROM depth_snapshot_archived UNION ALL SELECT * FROM depth_snapshot_tail"
        )
    else:
        con.execute("CREATE OR REPLACE VIEW depth_snapshot AS SELECT * FROM depth_snapshot_archived")
    con.execute(f"CREATE OR REPLACE VIEW top_of_book AS {TOP_OF_BOOK_SQL}")
    if info.coverage_files:
        # The files carry their own `hour` column (a timestamp): no Hive columns on top.
        con.execute(
            f"CREATE OR REPLACE VIEW coverage AS SELECT * FROM read_parquet({_lit(archive.glob('coverage'))}, "
            "hive_partitioning = false, union_by_name = true)"
        )
    else:
        empty = con.from_arrow(coverage_schema().empty_table())
        cols = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in zip(empty.columns, empty.types))
        con.execute(f"CREATE OR REPLACE VIEW coverage AS SELECT {cols} WHERE false")
        info.notes.append(
            f"No coverage dataset under {archive.dataset('coverage')} yet; the coverage view is empty."
        )
    bars_files = count_files(con, archive.glob("top_of_book_1s"))
    if bars_files:
        con.execute(
            "CREATE OR REPLACE VIEW top_of_book_1s AS SELECT * EXCLUDE (date, hour) FROM read_parquet("
            f"{_lit(archive.glob('top_of_book_1s'))}, hive_partitioning = true)"
        )
    else:
        typed = ", ".join(f"CAST(NULL AS {datasets.duckdb_type(f.type)}) AS {f.name}" for f in datasets.BARS_SCHEMA)
        con.execute(f"CREATE OR REPLACE VIEW top_of_book_1s AS SELECT {typed} WHERE false")
    con.execute(BOOK_AT_SQL)
    return info


def coverage_schema() -> pa.Schema:
    """The coverage dataset's schema, as the archive writes it."""
    return datasets.COVERAGE_SCHEMA


def count_files(con: duckdb.DuckDBPyConnection, pattern: str) -> int:
    """How many files match ``pattern`` (local or S3, through DuckDB's own glob)."""
    try:
        return con.execute("SELECT count(*) FROM glob(?)", [pattern]).fetchone()[0]
    except duckdb.Error as exc:
        text = str(exc)
        if "404" in text:
            raise ArchiveError(f"the bucket of {pattern} does not exist (S3 answered 404); check ORDERBOOK_ARCHIVE_URL") from exc
        if "403" in text:
            raise ArchiveError(f"S3 refused to list {pattern} (HTTP 403); check the AWS credentials and bucket policy") from exc
        raise ArchiveError(f"cannot list {pattern}: {one_line(exc)}") from exc


def depth_archived_sql(archive: Archive, n_files: int) -> str:
    cols = DEPTH_COLUMNS + ["date", "hour"]
    if n_files == 0:
        typed = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[c]}) AS {c}" for c in cols)
        return f"SELECT {typed} WHERE false"
    return (
        f"SELECT {', '.join(cols)} FROM read_parquet({_lit(archive.glob(DATASET))}, "
        "hive_partitioning = true, hive_types = {'date': DATE, 'hour': INTEGER})"
    )


def tail_sql(hours: list[tuple[str, int]]) -> str:
    """Tail rows minus any row already in the archive (same stream and update id).

    The archive side is restricted to the tail's hours with literal partition values,
    so DuckDB prunes every other hour's files instead of scanning the whole archive.
    """
    if hours:
        prune = " OR ".join(f"(a.date = DATE '{d}' AND a.hour = {h})" for d, h in hours)
    else:
        prune = "false"
    return (
        f"SELECT {', '.join('t.' + c for c in DEPTH_COLUMNS + ['date', 'hour'])} FROM buffer_unarchived t "
        "WHERE NOT EXISTS (SELECT 1 FROM depth_snapshot_archived a "
        f"WHERE ({prune}) AND a.stream = t.stream AND a.last_update_id = t.last_update_id)"
    )


def _tail_hours(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    rows = con.execute("SELECT DISTINCT CAST(date AS VARCHAR), hour FROM buffer_unarchived ORDER BY 1, 2").fetchall()
    return [(d, int(h)) for d, h in rows]


TOP_OF_BOOK_SQL = """
SELECT symbol, recv_time, best_bid, best_bid_qty, best_ask, best_ask_qty,
       (best_bid + best_ask) / 2 AS mid,
       best_ask - best_bid AS spread,
       (best_bid * best_ask_qty + best_ask * best_bid_qty) / (best_bid_qty + best_ask_qty) AS microprice
FROM (
    SELECT symbol, recv_time,
           bids[1].price AS best_bid, bids[1].qty AS best_bid_qty,
           asks[1].price AS best_ask, asks[1].qty AS best_ask_qty
    FROM depth_snapshot
)
""".strip()

# The last snapshot of a symbol at or before a time; one clear error when there is none.
# Times without an offset are read in the session's TimeZone (the query command sets UTC).
BOOK_AT_SQL = """
CREATE OR REPLACE MACRO book_at(sym, ts) AS TABLE
WITH hit AS (
    SELECT * FROM depth_snapshot
    WHERE symbol = upper(sym)
      AND recv_time <= CAST(ts AS TIMESTAMPTZ)
      AND date <= CAST(timezone('UTC', CAST(ts AS TIMESTAMPTZ)) AS DATE)
    ORDER BY recv_time DESC, session_id DESC, seq DESC
    LIMIT 1
),
miss AS (
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM depth_snapshot WHERE symbol = upper(sym)) THEN error(
            'book_at: unknown symbol ' || upper(sym) || '; the archive holds '
            || coalesce((SELECT string_agg(DISTINCT symbol, ', ' ORDER BY symbol) FROM depth_snapshot), 'no symbols')
            || '.')
        ELSE error(
            'book_at: no ' || upper(sym) || ' snapshot at or before ' || CAST(CAST(ts AS TIMESTAMPTZ) AS VARCHAR)
            || '; the first is at '
            || (SELECT CAST(min(recv_time) AS VARCHAR) FROM depth_snapshot WHERE symbol = upper(sym)) || '.')
    END AS symbol
    WHERE NOT EXISTS (SELECT 1 FROM hit)
)
SELECT * FROM hit UNION ALL BY NAME SELECT * FROM miss
""".strip()


# --------------------------------------------------------------------------- helpers


def _lit(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def one_line(exc: BaseException) -> str:
    """The first line of an error message (DuckDB appends context lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
