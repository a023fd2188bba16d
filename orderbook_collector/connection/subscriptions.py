"""``*`` and live subscriptions: following a market's listings on the open connections.

exchangeInfo is read every ``symbols_refresh`` seconds through the market's one REST client;
what changed becomes the groups' wanted streams at once, and each group's reconciler brings
its live session there with paced SUBSCRIBE and UNSUBSCRIBE requests (the pure planning is
:mod:`orderbook_collector.feed.symbols`).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from websockets.exceptions import ConnectionClosed

from orderbook_core.buffer.records import Event, EventKind, SessionStreams
from orderbook_core.streams import ROUTES, Market, spec as stream_spec
from orderbook_collector.connection.backoff import full_jitter
from orderbook_collector.connection.sessions import CONTROL_TIMEOUT, Group, Session, now_us
from orderbook_collector.connection.symbols import ExchangeInfoError, RestError, fetch_trading_symbols
from orderbook_collector.feed.protocol import ControlReply, StreamSpec
from orderbook_collector.feed.symbols import control_batches, control_message, plan_changes

log = logging.getLogger("orderbook_collector.connection.collector")


class Subscriptions:
    """The collector's ``*`` following and live (un)subscription (mixed into
    :class:`~.collector.Collector`)."""

    async def _follow_symbols(self, market: Market) -> None:
        """Read exchangeInfo now and every ``symbols_refresh`` seconds; apply what changed."""
        delays = full_jitter(self.settings.backoff_initial * 10, self.settings.symbols_refresh)
        failures = 0
        while not self._stopping.is_set():
            try:
                found = await fetch_trading_symbols(self._rest_client(market))
            except (RestError, ExchangeInfoError) as exc:
                failures += 1
                delay = next(delays)  # a 429/418's Retry-After already pauses the market's REST client
                log.warning("%s exchangeInfo failed (%s); the current symbols stay, retrying in %.1f s",
                            market.value, exc, delay)
                if failures == 1:
                    self._event(None, EventKind.SYMBOLS_FAILED, f"{market.value}: {exc}")
                await self._sleep(delay)
                continue
            failures = 0
            delays = full_jitter(self.settings.backoff_initial * 10, self.settings.symbols_refresh)
            if found.skipped:
                log.info("%s: %d trading symbol(s) cannot be stream names and are left out, e.g. %s",
                         market.value, len(found.skipped), found.skipped[0])
            self.apply_symbols(market, found.symbols)
            await self._sleep(self.settings.symbols_refresh)

    def apply_symbols(self, market: Market, symbols: frozenset[str]) -> None:
        """Make ``market``'s groups carry the named streams plus every kind of ``*`` for ``symbols``.

        Synchronous: the groups' wanted streams change at once (so the next plan starts from
        them); each group's reconciler then sends the control messages, and new groups open.
        """
        kinds = self.settings.all_symbols_kinds(market)
        wanted = {s.name: s for s in self.settings.stream_specs() if s.market is market}
        for sym in sorted(symbols):
            for k in kinds:
                sp = stream_spec(sym, k, market)
                if sp is not None:
                    wanted.setdefault(sp.name, sp)
        self._resync_streams(market, wanted.values())
        routes = sorted(set(ROUTES[market].values())) if market in ROUTES else [None]
        for route in routes:
            groups = [g for g in self.groups if g.market is market and g.route == route]
            names = [n for n, sp in wanted.items() if sp.route == route]
            plan = plan_changes([list(g.streams) for g in groups], names, self.settings.max_streams(market))
            for i, gone in plan.unsubscribe.items():
                for n in gone:
                    del groups[i].streams[n]
            for i, added in plan.subscribe.items():
                groups[i].streams.update((n, wanted[n]) for n in added)
            for g in groups:  # in sync: a no-op; else it retries what a refused request left undone
                g.dirty.set()
            for names_new in plan.new:
                self._start_group(market, route, [wanted[n] for n in names_new])
            if not plan.empty:
                log.info("%s%s: %d stream(s) to subscribe, %d to unsubscribe, %d new connection(s)",
                         market.value, f"/{route}" if route else "", sum(map(len, plan.subscribe.values())),
                         sum(map(len, plan.unsubscribe.values())), len(plan.new))

    async def _reconcile(self, g: Group) -> None:
        """Bring the group's live session to the group's streams with SUBSCRIBE and UNSUBSCRIBE."""
        while True:
            await g.dirty.wait()
            g.dirty.clear()
            async with g.lock:
                s = g.session
                if s is None or s.task is None or s.task.done():
                    continue  # the next session opens with the group's streams
                gone = [n for n in s.streams if n not in g.streams]
                added = [g.streams[n] for n in g.streams if n not in s.streams]
                if gone:
                    await self._control(s, "UNSUBSCRIBE", gone, [])
                # Paced requests of a bounded size: a URL's worth of names each.
                specs = {x.name: x for x in added}  # g.streams may change while we wait on replies
                for names in control_batches(list(specs)):
                    await self._control(s, "SUBSCRIBE", names, [specs[n] for n in names])
                if set(s.streams) >= set(g.streams):
                    s.complete.set()
                elif added:  # a request was refused or unanswered: the streams are still wanted
                    asyncio.get_running_loop().call_later(CONTROL_TIMEOUT, g.dirty.set)

    async def _control(self, s: Session, method: str, names: list[str], specs: list[StreamSpec]) -> None:
        """Send one control request on ``s`` (paced), wait for its reply, record the change as events."""
        if specs:
            # Frames may follow the reply at once: the reader and the writer must know the streams first.
            s.decoder.add_streams(specs)
            s.keys.update((x.name, x.key) for x in specs)
            self.metrics.add_streams(x.key for x in specs)
            self.writer.submit(SessionStreams(s.session_id, now_us(), orjson.dumps(names).decode()))
        loop = asyncio.get_running_loop()
        wait = s.pacer.delay(loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
        self._request_id += 1
        rid = self._request_id
        fut = s.pending[rid] = loop.create_future()
        kind = EventKind(method.lower())
        try:
            s.pacer.record(loop.time())
            await s.ws.send(control_message(method, names, rid))
            reply = await asyncio.wait_for(fut, CONTROL_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionClosed) as exc:
            reply = ControlReply(rid, None, {"msg": f"no reply ({type(exc).__name__})"})
        finally:
            s.pending.pop(rid, None)
        t = now_us()
        if reply.error is not None:
            log.warning("session %d: %s of %d stream(s) failed: %s", s.session_id, method, len(names), reply.error)
            self._event(s.session_id, EventKind(f"{kind.value}_failed"), f"request {rid}: {orjson.dumps(reply.error).decode()}")
            return
        for n in names:
            self.writer.submit(Event(t, s.session_id, s.keys.get(n, n), kind.value, f"request {rid}"))
        if method == "SUBSCRIBE":
            s.streams.update((x.name, x) for x in specs)
            self.silence.subscribed(specs, t)
        else:
            self.silence.unsubscribed([s.keys.get(n, n) for n in names if n in s.streams], t)
            for n in names:
                s.streams.pop(n, None)
                # An unsubscribed stream has no age to report (it would look ever staler).
                self.metrics.last_message_us.pop(s.keys.get(n, n), None)
        log.info("session %d: %s %d stream(s)", s.session_id, kind.value, len(names))

