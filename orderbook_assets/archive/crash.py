"""Named crash points for kill -9 tests.

``ORDERBOOK_CRASH_AT=after_parquet`` makes the process SIGKILL itself when it reaches
:func:`crash_point("after_parquet") <crash_point>`. Nothing else happens when the
variable is unset, so the calls stay in production code at no cost.

Points: ``after_plan``, ``after_parquet``, ``after_upload``, ``after_head``,
``before_archive``, ``cleanup_batch``.
"""

from __future__ import annotations

import os
import signal

ENV = "ORDERBOOK_CRASH_AT"


def crash_point(name: str) -> None:
    # The one environment read of the archive side outside ``orderbook_assets.settings``, on
    # purpose: a test switch, not a setting (undocumented for operators), read at the point
    # itself so the kill -9 tests reach deep code without a crash argument in every signature.
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
