"""The archive side reads its configuration in one module: ``orderbook_assets.settings``.

Every ``ORDERBOOK_*`` variable it uses is named, defaulted and parsed there; a bad value of
any of them is one sentence naming it, wherever the settings are loaded (the definitions, a
run's resources, the ``orderbook`` command)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from dagster import DagsterInstance

from orderbook_core.buffer.db import DEFAULT_PATH
from orderbook_core.errors import ConfigError

from orderbook_assets import settings
from orderbook_assets.analytics import query
from orderbook_assets.definitions import build

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "orderbook_assets"
SETTINGS_MODULE = "orderbook_assets/settings.py"
#: The environment reads allowed outside the settings module, each for its reason:
#: the kill -9 tests' crash hook (a test switch read at the point itself, archive/crash.py),
#: and boto3's AWS chain (AWS_* names, resolved only when an S3 archive is opened).
OTHER_READS = {
    ("orderbook_assets/archive/crash.py", "crash_point"),
    ("orderbook_assets/archive/location.py", "S3Settings.from_env"),
}
CRASH_HOOK = "ORDERBOOK_CRASH_AT"


def _env_reads(tree: ast.Module) -> set[str]:
    """The functions (qualified names) that touch ``os.environ``/``os.getenv`` (or import them)."""
    found: set[str] = set()
    # the names the os module is bound to (``import os as system`` reads the environment too)
    os_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                if a.name == "os"} | {"os"}

    def visit(node: ast.AST, scope: list[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = [*scope, node.name]
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv") \
                and isinstance(node.value, ast.Name) and node.value.id in os_names:
            found.add(".".join(scope) or "<module>")
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and {a.name for a in node.names} & {"environ", "environb", "getenv"}:
            found.add(".".join(scope) or "<module>")
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, [])
    return found


def _names_in_code(tree: ast.Module) -> set[str]:
    """``ORDERBOOK_*`` names in string literals (error messages, constants), docstrings left out."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {m for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings for m in re.findall(r"ORDERBOOK_[A-Z0-9_]*[A-Z0-9]", n.value)}


# Parsed at collection, not while tests run: ``ast.parse`` late in a long run hits CPython
# 3.11's "AST constructor recursion depth mismatch" (see tests/test_layers.py).
TREES = {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
READS = {(path, fn) for path, tree in TREES.items() for fn in _env_reads(tree)}
#: Files of the archive side whose strings spell the default buffer path.
BUFFER_DEFAULT_SPELT = {path for path, tree in TREES.items()
                        if any(isinstance(n, ast.Constant) and isinstance(n.value, str) and str(DEFAULT_PATH) in n.value
                               for n in ast.walk(tree))}
NAMES_USED = {name for tree in TREES.values() for name in _names_in_code(tree)}


def test_only_the_settings_module_reads_the_environment():
    outside = {r for r in READS if r[0] != SETTINGS_MODULE}
    assert outside == OTHER_READS, f"read the environment in {SETTINGS_MODULE}, not in {sorted(outside - OTHER_READS)}"
    assert (SETTINGS_MODULE, "load") in READS


def test_every_archive_side_variable_is_a_setting_of_the_settings_module():
    assert NAMES_USED - {CRASH_HOOK} == set(settings.NAMES), "a name used but not loaded, or loaded but unused"
    assert len(settings.NAMES) == len(set(settings.NAMES)) == len(settings.PARSERS)


def test_the_scan_sees_a_planted_read():
    planted = ast.parse("import os\ndef f():\n    return os.environ.get('ORDERBOOK_BUFFER')\n"
                        "class C:\n    def g(self):\n        from os import getenv\n"
                        "def h():\n    import os as system\n    return system.getenv('ORDERBOOK_BUFFER')\n")
    assert _env_reads(planted) == {"f", "C.g", "h"}
    assert _names_in_code(planted) == {"ORDERBOOK_BUFFER"}


def test_every_setting_is_documented():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert [n for n in settings.NAMES if f"`{n}`" not in page] == []


def test_the_default_buffer_path_is_written_once_in_the_kernel():
    assert BUFFER_DEFAULT_SPELT == set()  # orderbook_core/buffer/db.py's DEFAULT_PATH, referenced by name


def test_nothing_set_gives_the_documented_defaults():
    s = settings.load({})
    assert s == settings.ArchiveSettings()
    assert s.buffer is DEFAULT_PATH  # the one default buffer path (orderbook_core/buffer/db.py)
    assert (str(s.buffer), s.archive_url, s.retention_hours) == ("data/buffer.sqlite3", "data/archive", 24.0)
    assert (s.host_id, s.fleet_hosts, s.official_url, s.export_formats) == (None, (), None, ())
    assert (s.partitions_start, s.freshness_seconds, s.archive_deadline_minutes) == ("2026-11-01-00:00", 120.0, 30.0)
    assert (s.book.depth, s.book.interval_us, s.data_source.value, s.s3_capabilities) == (25, 1_000_000, "binance", "")


def test_values_are_parsed_once_into_their_types():
    s = settings.load({
        "ORDERBOOK_BUFFER": " /tmp/b.sqlite3 ", "ORDERBOOK_ARCHIVE_URL": "s3://bucket/p", "ORDERBOOK_RETENTION_HOURS": "0",
        "ORDERBOOK_HOST_ID": "tokyo_1", "ORDERBOOK_FLEET_HOSTS": "b, a,b", "ORDERBOOK_PARTITIONS_START": "2026-11-20",
        "ORDERBOOK_OFFICIAL_URL": "https://data.binance.vision", "ORDERBOOK_EXPORT_FORMATS": "Tardis,hftbacktest,tardis",
        "ORDERBOOK_FRESHNESS_SECONDS": "1.5", "ORDERBOOK_ARCHIVE_DEADLINE_MINUTES": "45", "ORDERBOOK_BOOK_DEPTH": "10",
        "ORDERBOOK_BOOK_INTERVAL_MS": "100", "ORDERBOOK_DATA_SOURCE": "Simulated",
        "ORDERBOOK_S3_CAPABILITIES": "create=head-then-put,verify=download",
    })
    assert s.buffer == Path("/tmp/b.sqlite3") and s.location().bucket == "bucket" and s.retention_hours == 0.0
    assert (s.host_id, s.fleet_hosts, s.partitions_start) == ("tokyo_1", ("a", "b"), "2026-11-20-00:00")
    assert [f.value for f in s.export_formats] == ["tardis", "hftbacktest"]
    assert (s.freshness_seconds, s.archive_deadline_minutes, s.book.depth, s.book.interval_us) == (1.5, 45.0, 10, 100_000)
    assert s.data_source is settings.DataSource.SIMULATED


def test_a_flag_takes_the_place_of_the_variable_it_mirrors():
    env = {"ORDERBOOK_ARCHIVE_URL": "gs://not/ours", "ORDERBOOK_BUFFER": "/env/buffer.sqlite3"}
    s = settings.load(env, overrides={settings.ARCHIVE_URL: "s3://flag/p", settings.BUFFER: None})
    assert (s.archive_url, s.buffer) == ("s3://flag/p", Path("/env/buffer.sqlite3"))
    with pytest.raises(ValueError, match="not archive settings"):
        settings.load({}, overrides={"ORDERBOOK_SYMBOLS": "x"})


#: A bad value of every setting that has one (the buffer path and the official files' address
#: are taken as given: the buffer is checked when opened, the address when fetched).
BAD = {
    "ORDERBOOK_ARCHIVE_URL": "gs://bucket/x",
    "ORDERBOOK_RETENTION_HOURS": "soon",
    "ORDERBOOK_HOST_ID": "Tokyo-1",
    "ORDERBOOK_FLEET_HOSTS": "a,B b",
    "ORDERBOOK_PARTITIONS_START": "2999-01-01",
    "ORDERBOOK_EXPORT_FORMATS": "tardis,csv",
    "ORDERBOOK_FRESHNESS_SECONDS": "0",
    "ORDERBOOK_ARCHIVE_DEADLINE_MINUTES": "-5",
    "ORDERBOOK_BOOK_DEPTH": "many",
    "ORDERBOOK_BOOK_INTERVAL_MS": "7",
    "ORDERBOOK_DATA_SOURCE": "kraken",
    "ORDERBOOK_S3_CAPABILITIES": "create=maybe",
}
FREE_FORM = {"ORDERBOOK_BUFFER", "ORDERBOOK_OFFICIAL_URL"}


def test_every_setting_with_a_grammar_has_a_bad_value_here():
    assert set(BAD) | FREE_FORM == set(settings.NAMES) and not set(BAD) & FREE_FORM


def one_sentence(message: str, name: str) -> None:
    assert message.startswith(f"{name}: ") and message.endswith(".") and "\n" not in message, message
    assert not re.search(r"[.!?] [A-Z]", message), message  # no second sentence ("e.g. 30" is not one)


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_one_sentence_naming_the_setting(name):
    with pytest.raises(ConfigError) as err:
        settings.load({name: BAD[name]})
    assert err.value.setting == name
    one_sentence(str(err.value), name)


@pytest.mark.parametrize("name", ["ORDERBOOK_HOST_ID", "ORDERBOOK_EXPORT_FORMATS", "ORDERBOOK_BOOK_DEPTH"])
def test_the_definitions_refuse_to_load_with_a_bad_setting(name):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        build({name: BAD[name]})


def test_a_run_loads_the_settings_when_it_starts(tmp_path, monkeypatch):
    """The definitions load once; each run's resources read the environment as the run starts."""
    from support.buffer_rows import BASE_HOUR_US, fill_buffer

    defs = build({})
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US, 20)
    job = defs.resolve_job_def("cleanup_buffer")
    assert job.execute_in_process(instance=DagsterInstance.ephemeral()).success
    monkeypatch.setenv("ORDERBOOK_RETENTION_HOURS", "soon")
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_failure)
    assert "ORDERBOOK_RETENTION_HOURS: 'soon' is not a number of hours" in str(failure.event_specific_data.error)


def test_the_command_exits_2_with_the_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", "7")
    assert query.main(["--archive", str(tmp_path), "SELECT 1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orderbook query: ORDERBOOK_BOOK_INTERVAL_MS: is 7;") and "\n" not in err
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", "1000")
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", "gs://not/ours")
    assert query.main(["export", "--format", "tardis", "--date", "2026-11-01", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("orderbook export: ORDERBOOK_ARCHIVE_URL: scheme 'gs' is not supported")


def test_every_job_schedule_and_sensor_resolves_with_every_feature_on():
    defs = build({"ORDERBOOK_HOST_ID": "a", "ORDERBOOK_FLEET_HOSTS": "a,b", "ORDERBOOK_OFFICIAL_URL": "x",
                  "ORDERBOOK_EXPORT_FORMATS": "tardis"})
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"archive_hour_a", "cleanup_buffer_a", "check_freshness_a", "merge_fleet_hour", "reconcile_day",
            "export_day"} <= jobs
    repo = defs.get_repository_def()
    assert {s.job_name for s in repo.schedule_defs} <= jobs and len(repo.schedule_defs) >= 4
    sensed = {j.name for s in repo.sensor_defs for j in s.jobs}
    assert sensed <= jobs and "check_freshness_a" in sensed
