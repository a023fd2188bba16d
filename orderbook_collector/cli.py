"""``orderbook-collector``: run the collector until SIGTERM or Ctrl-C.

Exit status: 0 after a clean shutdown, 2 for invalid settings (one sentence on
stderr naming the setting and the fix), 1 when the exchange refuses us for good.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from orderbook_collector.connection.collector import Collector, check_startable
from orderbook_collector.config import load
from orderbook_core.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    try:
        settings, args = load(argv)
        check_startable(settings)
    except ConfigError as exc:
        print(f"orderbook-collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def run() -> None:
        collector.install_signal_handlers()
        await collector.run()

    try:
        collector = Collector(settings)  # takes the buffer's lock
        asyncio.run(run())
    except ConfigError as exc:  # the buffer's lock, the metrics address
        print(f"orderbook-collector: {exc}", file=sys.stderr)
        return 2
    if collector.fatal:
        print(f"orderbook-collector: {collector.fatal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
