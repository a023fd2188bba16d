"""REST depth snapshots for the collector's diff streams: one resync queue per market.

The writer thread reports streams that need a snapshot after each commit (a break, a new
session, a snapshot too old); they are handed to the event loop and to the market's
:class:`~.rest.Resyncer`, which also re-bases every diff stream on its own schedule.
"""

from __future__ import annotations

import contextlib
import logging

from orderbook_core.streams import OPEN_INTEREST, Kind, Market, stream_kind
from orderbook_collector.connection.open_interest import OpenInterestPoller
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.feed.sync import SnapshotRequest

log = logging.getLogger("orderbook_collector.connection.collector")


class Snapshots:
    """The collector's REST clients and resync queues (mixed into :class:`~.collector.Collector`)."""

    def _rest_client(self, market: Market) -> RestClient:
        """The market's one REST client: depth snapshots and exchangeInfo share its weight budget."""
        client = self.rest_clients.get(market)
        if client is None:
            s = self.settings
            client = self.rest_clients[market] = RestClient(
                market, s.rest_base(market), s.rest_weight_share,
                budget=(s.rest_weight_budget or {}).get(market), window=s.rest_weight_window,
                concurrency=s.rest_concurrency, metrics=self.metrics)
        return client

    def _start_resyncers(self) -> None:
        """One resync queue per market with diff streams, named or to come from ``*``."""
        s = self.settings
        for market in Market:
            diff = [x for x in s.stream_specs() if x.type is Kind.DIFF_DEPTH and x.market is market]
            star = any(stream_kind(k, market).type is Kind.DIFF_DEPTH for k in s.all_symbols_kinds(market))
            if not diff and not star:
                continue
            self.resyncers[market] = r = Resyncer(self._rest_client(market), diff, self.writer.submit,
                                                  s.snapshot_limit(market), rebase_seconds=s.rebase_seconds)
            self._resyncer_of.update((x.key, r) for x in diff)
            r.start()

    def _start_open_interest(self) -> None:
        """One open-interest poller per futures market recorded, if ``ORDERBOOK_OPEN_INTEREST_SECONDS`` is set:
        its named symbols now, ``*``'s when exchangeInfo is read."""
        s = self.settings
        if s.open_interest_seconds <= 0:
            return
        for market in s.markets():
            if market in OPEN_INTEREST:
                named = {x.symbol for x in s.stream_specs() if x.market is market}
                self.oi_pollers[market] = p = OpenInterestPoller(
                    self._rest_client(market), named, self.writer.submit, s.open_interest_seconds)
                p.start()

    def _resync_streams(self, market: Market, specs) -> None:
        """The market's diff streams now (``*`` follows listings): resynced and re-based like the named
        ones; its open interest polled for every symbol recorded."""
        specs = list(specs)
        p = self.oi_pollers.get(market)
        if p is not None:
            p.set_symbols({x.symbol for x in specs})
        r = self.resyncers.get(market)
        if r is not None:
            diff = [x for x in specs if x.type is Kind.DIFF_DEPTH]
            r.set_streams(diff)
            self._resyncer_of.update((x.key, r) for x in diff)

    def _snapshot_needed(self, requests: list[SnapshotRequest]) -> None:
        """Called in the writer thread after a commit: streams that broke (a reconnect's first
        event, a gap) or whose snapshot could not sync them. Handed to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: the next start asks again
            loop.call_soon_threadsafe(self._resync, requests)

    def _resync(self, requests: list[SnapshotRequest]) -> None:
        for req in requests:
            r = self._resyncer_of.get(req.stream)
            if r is not None:
                r.request(req.stream, req.reason, req.repair)

