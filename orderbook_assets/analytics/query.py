"""``orderbook query``: DuckDB with the analysts' views over the archive.

Usage::

    orderbook query [--archive URL] [--buffer PATH] [--with-tail] [--write-db FILE]
                    [--format box|csv] [--max-rows N] ["SQL"]

With SQL, run it and print the result; without SQL on a terminal, an interactive
shell; without SQL on a pipe, read the SQL from stdin. ``--write-db FILE`` stores
the views (and, with ``--with-tail``, the tail as of now) in a DuckDB database file
for any DuckDB client. Configuration as for the archive: ``ORDERBOOK_ARCHIVE_URL``,
``ORDERBOOK_BUFFER``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` and the AWS credential chain.

A user error (bad SQL, unknown symbol, empty archive, missing credentials or files)
prints one sentence on stderr and exits with status 2; no traceback.

``orderbook replay ...``, ``orderbook reconcile ...`` and ``orderbook export ...`` are the other subcommands of the console
script (``analytics.replay``, ``analytics.reconcile``, ``analytics.backtest``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import duckdb

from orderbook_core.buffer.db import DEFAULT_PATH
from orderbook_core.errors import OrderbookError

from orderbook_assets import settings
from orderbook_assets.analytics import views
from orderbook_assets.archive.location import Location

USER_ERROR = 2
VIEWS_HELP = ("depth_snapshot, depth_update, depth_rest_snapshot, trade, agg_trade, book_ticker, mark_price, liquidation, "
              "open_interest, top_of_book, coverage, derivative_ticker (when mark prices are recorded) "
              "and the macro book_at(symbol, time)")

#: Views a note may be about: with one statement, such a note is shown only if the statement names it.
NOTED_VIEWS = ("coverage", views.DERIVATIVE_TICKER)


class QueryError(OrderbookError):
    """A user's query or setting cannot be served; the message is one sentence."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderbook query",
        description=f"Query the order-book archive with DuckDB. Views: {VIEWS_HELP}.",
    )
    p.add_argument("sql", nargs="?", help="one SQL statement (or several separated by ';'); omit for a shell")
    p.add_argument("--archive", default=None,
                   help=f"s3://bucket/prefix or a folder (default: ${settings.ARCHIVE_URL} or {settings.DEFAULT_ARCHIVE})")
    p.add_argument("--buffer", default=None,
                   help=f"SQLite buffer for --with-tail (default: ${settings.BUFFER} or {DEFAULT_PATH})")
    p.add_argument("--with-tail", action="store_true",
                   help="add the buffer's not-yet-archived rows to every stream dataset's view (data up to the last second)")
    p.add_argument("--write-db", metavar="FILE", default=None,
                   help="write a DuckDB database file holding the views, then run SQL if given")
    p.add_argument("--format", choices=("box", "csv"), default="box", help="output format (default: box)")
    p.add_argument("--max-rows", type=int, default=40, help="rows shown in box format (default: 40)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orderbook`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "replay":  # `orderbook replay ...`
        from orderbook_assets.analytics import replay

        return replay.main(argv[1:], archive_location)
    if argv and argv[0] == "reconcile":  # `orderbook reconcile ...`
        from orderbook_assets.analytics import reconcile

        return reconcile.main(argv[1:], archive_location)
    if argv and argv[0] == "export":  # `orderbook export ...` (analytics.backtest)
        from orderbook_assets.analytics import backtest

        return backtest.main(argv[1:], archive_location)
    if argv and argv[0] == "query":  # `orderbook query ...`; `python -m orderbook_assets.analytics.query ...` too
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OrderbookError, duckdb.Error) as exc:
        print(f"orderbook query: {friendly(exc)}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        return 130


def archive_location(flag: str | None) -> Location:
    """The archive every subcommand reads: ``--archive`` in place of ``ORDERBOOK_ARCHIVE_URL``,
    through the archive job's own settings (its default, its parser).

    Raises:
        ConfigError: the archive URL, or any other archive-side setting, is invalid.
    """
    return settings.load(overrides={settings.ARCHIVE_URL: flag}).location()


def run(args: argparse.Namespace) -> int:
    # the archive job's own settings, the flags in place of the variables they mirror
    config = settings.load(overrides={settings.ARCHIVE_URL: args.archive, settings.BUFFER: args.buffer})
    archive_url = config.location().url
    buffer_path = str(config.buffer) if args.with_tail else None
    con, info = open_connection(archive_url, buffer_path, args.write_db)
    interactive = args.sql is None and (args.write_db or sys.stdin.isatty())
    _print_notes(info, None if interactive else (args.sql or ""))
    _announce_db(info, args.write_db)
    try:
        if args.sql is not None:
            return execute(con, args.sql, args.format, args.max_rows)
        if args.write_db:
            return 0
        if sys.stdin.isatty():
            return shell(con, args, archive_url, buffer_path)
        return execute(con, sys.stdin.read(), args.format, args.max_rows)
    finally:
        con.close()


def open_connection(
    archive_url: str, buffer_path: str | None, db_file: str | None = None
) -> tuple[duckdb.DuckDBPyConnection, views.ViewInfo]:
    """A DuckDB connection (in memory, or ``db_file``) with the views registered.

    Raises:
        QueryError: the archive holds no data (and the tail, if read, no rows either).
    """
    con = duckdb.connect(db_file or ":memory:")
    try:
        info = views.register_views(con, archive_url, buffer_path)
        if info.empty:
            where = " and the buffer has no unarchived rows" if info.tail_rows is not None else ""
            hint = "" if info.tail_rows is not None else " (or add --with-tail to read the buffer)"
            raise QueryError(
                f"the archive at {info.archive.url} holds no depth_snapshot data yet{where}; "
                f"run the archive_hour job first or check ORDERBOOK_ARCHIVE_URL{hint}."
            )
    except BaseException:
        con.close()
        raise
    return con, info


def _print_notes(info: views.ViewInfo, sql: str | None) -> None:
    """Notes go to stderr; for one statement only those about the views it names."""
    for note in info.notes:
        about = [v for v in NOTED_VIEWS if v in note]
        if sql is None or not about or any(v in sql.lower() for v in about):
            print(f"note: {note}", file=sys.stderr)


def _announce_db(info: views.ViewInfo, db_file: str | None) -> None:
    if db_file:
        print(f"wrote the views to {db_file}" + (
            "; other DuckDB clients must LOAD httpfs and CREATE SECRET for S3 themselves (docs/analysts.md)."
            if info.archive.is_s3 else "."), file=sys.stderr)


def execute(con: duckdb.DuckDBPyConnection, sql: str, fmt: str = "box", max_rows: int = 40,
            out: io.TextIOBase | None = None) -> int:
    """Run ``sql`` and print the last statement's result. Errors propagate as duckdb.Error."""
    out = out or sys.stdout
    if not sql.strip():
        raise QueryError("no SQL given; pass a statement such as \"SELECT * FROM top_of_book LIMIT 5\".")
    rel = con.sql(sql)
    if rel is None:
        return 0
    if fmt == "csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(rel.to_arrow_table(), buf)
        out.write(buf.getvalue().decode())
    else:
        out.write(render(rel, max_rows) + "\n")
    out.flush()
    return 0


def render(rel: duckdb.DuckDBPyRelation, max_rows: int = 40) -> str:
    """DuckDB's box rendering, as wide as the terminal allows (120 columns on a pipe)."""
    width = os.get_terminal_size().columns if sys.stdout.isatty() else 120
    return rel.__str__() if max_rows is None else _show(rel, max_rows, width)


def _show(rel: duckdb.DuckDBPyRelation, max_rows: int, width: int) -> str:
    buf = io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try:
        rel.show(max_rows=max_rows, max_width=width)
    finally:
        sys.stdout = old
    return buf.getvalue().rstrip("\n")


def shell(con: duckdb.DuckDBPyConnection, args: argparse.Namespace, archive_url: str,
          buffer_path: str | None) -> int:
    """A read-eval loop: statements end with ';'. Dot commands: .tables .refresh .quit."""
    try:
        import readline  # noqa: F401  (history and line editing where available)
    except ImportError:
        pass
    print(f"orderbook query on {archive_url}. Views: {VIEWS_HELP}.")
    print("End statements with ';'. .tables lists views, .refresh re-reads the tail, .quit leaves.")
    pending = ""
    while True:
        try:
            line = input("   ...> " if pending else "orderbook> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            pending = ""
            continue
        cmd = line.strip()
        if not pending and cmd.startswith("."):
            if cmd in (".quit", ".exit", ".q"):
                return 0
            if cmd == ".tables":
                print(", ".join(r[0] for r in con.execute(
                    "SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()))
            elif cmd == ".refresh" and buffer_path:
                views.register_views(con, archive_url, buffer_path)
                print("tail re-read.")
            else:
                print("unknown command; use .tables, .refresh (with --with-tail) or .quit")
            continue
        pending += line + "\n"
        if not cmd.endswith(";"):
            continue
        sql, pending = pending, ""
        try:
            execute(con, sql, args.format, args.max_rows)
        except (OrderbookError, duckdb.Error) as exc:
            print(f"error: {friendly(exc)}")


def friendly(exc: BaseException) -> str:
    """One sentence for the user from an error of ours or of DuckDB."""
    text = views.one_line(exc)
    for prefix in ("Invalid Input Error: ", "Binder Error: ", "Catalog Error: ", "Conversion Error: ",
                   "IO Error: ", "HTTP Error: ", "Parser Error: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if isinstance(exc, duckdb.ParserException):
        text = f"the SQL could not be parsed: {text}"
    elif isinstance(exc, duckdb.CatalogException):
        text = f"{text.rstrip('!')} (the views are {VIEWS_HELP})"
    elif isinstance(exc, duckdb.BinderException):
        text = f"the SQL cannot be run: {text}"
    elif isinstance(exc, duckdb.ConversionException):
        text = f"a value could not be converted: {text}"
    elif isinstance(exc, (duckdb.HTTPException, duckdb.IOException)) and "403" in str(exc):
        text = f"S3 refused access (HTTP 403); check the AWS credentials and the bucket policy: {text}"
    elif isinstance(exc, (duckdb.HTTPException, duckdb.IOException)) and "404" in str(exc):
        text = f"S3 answered 404 Not Found; check the bucket in ORDERBOOK_ARCHIVE_URL: {text}"
    text = text.strip().rstrip("!")
    return text if text.endswith((".", "?", "!")) else text + "."


if __name__ == "__main__":
    sys.exit(main())
