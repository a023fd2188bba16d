import sys

from orderbook_collector.cli import main

sys.exit(main())
