"""Open interest in the kernel, sans I/O: literal REST answers decoded, malformed ones refused
with a reason, and the key of a polled series."""

from __future__ import annotations

import pytest

from orderbook_core.buffer.records import OpenInterestRecord
from orderbook_core.errors import FrameError, QuarantineReason as Q
from orderbook_core.payloads import decode_open_interest
from orderbook_core.streams import OPEN_INTEREST, Market, open_interest_key, parse_open_interest_key

USDM = Market.USDM
#: USD-M REST "Open Interest", the documented example answer, byte for byte.
DOCUMENTED = b'{\n\t"openInterest": "10659.509", \n\t"symbol": "BTCUSDT",\n\t"time": 1589437530011\n}'


def test_the_documented_answer_is_decoded():
    r = decode_open_interest(USDM, "btcusdt", DOCUMENTED, 1_589_437_530_500_000)
    assert r == OpenInterestRecord("usdm:btcusdt@openInterest", "usdm", "BTCUSDT", 1_589_437_530_500_000,
                                   1589437530011, 10659.509)


def test_zero_open_interest_is_a_value():
    r = decode_open_interest(USDM, "newusdt", b'{"openInterest":"0","symbol":"NEWUSDT","time":1}', 5)
    assert (r.open_interest, r.time_ms) == (0.0, 1)


@pytest.mark.parametrize("body, reason, detail", [
    (b"<html>busy</html>", Q.NOT_JSON, "unexpected character"),
    (b'[{"openInterest": "1", "symbol": "BTCUSDT", "time": 1}]', Q.NOT_OBJECT, "open interest is not a JSON object"),
    (b'{"openInterest": "1", "symbol": "ETHUSDT", "time": 1}', Q.WRONG_SYMBOL, "open interest of 'ETHUSDT', not of 'BTCUSDT' as asked"),
    (b'{"openInterest": "1", "time": 1}', Q.WRONG_SYMBOL, "open interest of 'None', not of 'BTCUSDT' as asked"),
    (b'{"openInterest": "-0.5", "symbol": "BTCUSDT", "time": 1}',
     Q.OUT_OF_RANGE, "open interest ('openInterest') must be non-negative and finite"),
    (b'{"openInterest": "NaN", "symbol": "BTCUSDT", "time": 1}',
     Q.OUT_OF_RANGE, "open interest ('openInterest') must be non-negative and finite"),
    (b'{"openInterest": "inf", "symbol": "BTCUSDT", "time": 1}',
     Q.OUT_OF_RANGE, "open interest ('openInterest') must be non-negative and finite"),
    (b'{"openInterest": 10659.5, "symbol": "BTCUSDT", "time": 1}',
     Q.BAD_DECIMAL, "open interest ('openInterest') missing or not a decimal string"),
    (b'{"openInterest": "ten", "symbol": "BTCUSDT", "time": 1}',
     Q.BAD_DECIMAL, "open interest ('openInterest') is not a decimal number: 'ten'"),
    (b'{"openInterest": "1", "symbol": "BTCUSDT"}', Q.BAD_INTEGER, "time ('time') missing or not a non-negative 64-bit integer"),
    (b'{"openInterest": "1", "symbol": "BTCUSDT", "time": "1589437530011"}',
     Q.BAD_INTEGER, "time ('time') missing or not a non-negative 64-bit integer"),
    (b'{"openInterest": "1", "symbol": "BTCUSDT", "time": -1}',
     Q.BAD_INTEGER, "time ('time') missing or not a non-negative 64-bit integer"),
    (b'{"code": -1121, "msg": "Invalid symbol."}', Q.WRONG_SYMBOL, "open interest of 'None', not of 'BTCUSDT' as asked"),
])
def test_a_malformed_answer_is_refused_with_its_reason(body, reason, detail):
    with pytest.raises(FrameError) as e:
        decode_open_interest(USDM, "btcusdt", body, 5)
    assert e.value.reason is reason and e.value.detail.startswith(detail), e.value


def test_the_series_key_names_market_and_symbol_and_nothing_else_parses_as_one():
    assert OPEN_INTEREST[USDM] == ("/fapi/v1/openInterest", 1)
    assert open_interest_key(USDM, "BTCUSDT") == "usdm:btcusdt@openInterest"
    assert parse_open_interest_key("usdm:btcusdt@openInterest") == (USDM, "btcusdt")
    for other in ("usdm:btcusdt@trade", "btcusdt@openInterest", "spot:btcusdt@openInterest", "usdm:@openInterest",
                  "usdm:btcusdt@openinterest", ""):
        assert parse_open_interest_key(other) is None, other

