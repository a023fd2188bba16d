"""One archive-location parser and one S3 recipe: every entry point accepts the same URLs
and reads the same settings the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from orderbook_assets.analytics import query, views
from orderbook_assets.derived import bars
from orderbook_assets.archive.location import Location, S3Settings
from orderbook_assets.archive.store import LocalStore, parse_archive_url
from orderbook_assets.defs.resources import ArchiveResource, ArchiveS3Resource
from orderbook_assets.settings import ARCHIVE_URL, load
from orderbook_core.errors import ConfigError

GOOD = ["s3://bucket/prefix", "s3://bucket/a/b/", "s3://bucket", "file:///tmp/arch", "file://localhost/tmp/arch",
        "data/archive", "/tmp/arch/", "~/arch"]
BAD = ["", "s3://", "s3:///prefix", "gs://bucket/x", "http://host/x", "file://otherhost/x", "file://"]


def entry_points(url: str) -> dict[str, str]:
    """The normalised location each entry point makes of ``url``."""
    kind, where, prefix = parse_archive_url(url)
    return {
        "Location.parse": Location.parse(url).url,
        "store.parse_archive_url": f"s3://{where}/{prefix}".rstrip("/") if kind == "s3" else where,
        "views.Archive.parse": views.Archive.parse(url).url,
        "ArchiveResource.location": ArchiveResource(url=url, s3=ArchiveS3Resource()).location().url,
        "orderbook query": load({}, overrides={ARCHIVE_URL: url}).location().url,
    }


@pytest.mark.parametrize("url", GOOD)
def test_every_entry_point_accepts_the_same_urls_alike(url):
    seen = entry_points(url)
    assert len(set(seen.values())) == 1, seen


@pytest.mark.parametrize("url", BAD)
def test_every_entry_point_refuses_the_same_urls_naming_the_setting(url):
    for name, parse in {
        "Location.parse": Location.parse,
        "store.parse_archive_url": parse_archive_url,
        "views.Archive.parse": views.Archive.parse,
        "ArchiveResource.location": lambda u: ArchiveResource(url=u, s3=ArchiveS3Resource()).location(),
    }.items():
        if url == "" and name == "ArchiveResource.location":
            continue  # an empty setting means the default folder there
        with pytest.raises(ConfigError, match="ORDERBOOK_ARCHIVE_URL"):
            parse(url)


def test_a_file_url_archive_works_for_the_store_the_bars_and_the_query(tmp_path, capsys):
    """The old parsers disagreed: archive_hour wrote to file:///x and the bars asset refused it."""
    from support.synthetic import T0, synthetic_depth, write_archive

    write_archive(synthetic_depth(start_us=T0, seconds=5), tmp_path)
    url = f"file://{tmp_path}"
    resource = ArchiveResource(url=url, s3=ArchiveS3Resource())
    store = resource.open_store()
    assert isinstance(store, LocalStore) and store.root == tmp_path
    out, written = bars.materialize_hour(url, T0, resource.s3_settings(), store)
    assert out.num_rows > 0 and Path(written).is_file()
    assert query.main(["--archive", url, "SELECT count(*) AS n FROM top_of_book_1s"]) == 0
    assert str(out.num_rows) in capsys.readouterr().out


def _no_aws_files(monkeypatch, tmp_path):
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")


def test_a_missing_region_means_the_same_for_the_archive_job_and_the_analysts(monkeypatch, tmp_path, capsys):
    _no_aws_files(monkeypatch, tmp_path)
    # AWS S3 (no endpoint): an error everywhere, naming AWS_REGION
    with pytest.raises(ConfigError, match="AWS_REGION"):
        ArchiveResource(url="s3://b/p", s3=ArchiveS3Resource()).open_store()
    with pytest.raises(ConfigError, match="AWS_REGION"):
        S3Settings.from_env()
    assert query.main(["--archive", "s3://b/p", "SELECT 1"]) == 2
    assert "AWS_REGION: is not set" in capsys.readouterr().err
    # a self-hosted endpoint: us-east-1, for the archive job, DuckDB and boto3 alike
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    archive_side = ArchiveResource(url="s3://b/p", s3=ArchiveS3Resource()).s3_settings()
    analyst_side = S3Settings.from_env()
    assert archive_side == analyst_side and archive_side.region == "us-east-1"
    assert "REGION 'us-east-1'" in analyst_side.secret_sql()
    assert archive_side.client().meta.region_name == "us-east-1"


def test_the_client_recipe_asks_checksums_only_when_required(monkeypatch, tmp_path):
    _no_aws_files(monkeypatch, tmp_path)
    client = S3Settings.from_env({}, region="eu-west-1", endpoint_url="http://127.0.0.1:9").client(max_attempts=3)
    cfg = client.meta.config
    assert (cfg.request_checksum_calculation, cfg.response_checksum_validation) == ("when_required", "when_required")
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 3}
    assert cfg.s3 == {"addressing_style": "path"}
