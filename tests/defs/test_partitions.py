"""The first partition comes from ORDERBOOK_PARTITIONS_START; a bad value is one sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orderbook_assets.settings import DEFAULT_PARTITIONS_START as DEFAULT_START, PARTITIONS_START as START_ENV, load
from orderbook_core.errors import ConfigError

from support.procs import ROOT, child_env

FIRST_KEY = "from orderbook_assets.definitions import defs; print(defs.resolve_job_def('archive_hour').partitions_def.get_first_partition_key())"


def first_key(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FIRST_KEY], cwd=ROOT, env=child_env(**env),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_start_is_configurable_and_the_definitions_use_it():
    assert first_key(**{START_ENV: "2026-11-20"}).stdout.strip() == "2026-11-20-00:00"
    assert first_key(**{START_ENV: "2026-11-20-13:00"}).stdout.strip() == "2026-11-20-13:00"
    assert first_key(**{START_ENV: ""}).stdout.strip() == DEFAULT_START


@pytest.mark.parametrize("value", ["yesterday", "2026-11-20 13:00", "2026-11-20-13:30", "2026-13-01", "2999-01-01"])
def test_a_bad_start_is_one_sentence_naming_the_setting(value):
    with pytest.raises(ConfigError) as err:
        load({START_ENV: value})
    message = str(err.value)
    assert message.startswith(f"{START_ENV}: ") and message.endswith(".") and "\n" not in message
