"""Tick validation: each reason code, the stream continuing after it, and the gap rule."""

from __future__ import annotations

import math

import msgspec
import pytest

from tradepipe.sources.validation import (
    CROSSED, DUPLICATE, JUMP, LOCKED, NON_POSITIVE, NOT_FINITE, OUT_OF_ORDER, TickValidator,
)

T0 = 1_399_248_000_000  # 2014-05-05T00:00:00Z
GOOD = (T0, 1.38710, 1.38726)  # the first real sample tick, at its second


@pytest.mark.parametrize("bid, ask, ts_offset, code", [
    (math.nan, 1.38726, 1, NOT_FINITE),
    (1.38710, math.inf, 1, NOT_FINITE),
    (0.0, 1.38726, 1, NON_POSITIVE),
    (1.38710, -1.38726, 1, NON_POSITIVE),
    (1.38726, 1.38710, 1, CROSSED),
    (1.38710, 1.38726, -1, OUT_OF_ORDER),
    (1.38710, 1.38726, 0, DUPLICATE),
    (1.50000, 1.50010, 1, JUMP),  # +8 %
])
def test_each_rejection_has_its_code_and_the_next_good_tick_is_accepted(bid, ask, ts_offset, code):
    validator = TickValidator()
    assert validator.check("EURUSD", *GOOD) is None
    rejection = validator.check("EURUSD", T0 + ts_offset, bid, ask)
    assert rejection is not None and rejection.code == code
    assert rejection.message
    assert validator.check("EURUSD", T0 + 2, 1.38712, 1.38725) is None


def test_crossed_message_is_readable():
    rejection = TickValidator().check("EURUSD", T0, 1.2, 1.1)
    assert rejection == (CROSSED, "crossed quote ask 1.1 < bid 1.2")


def test_locked_quote_allowed_by_default_and_configurable():
    assert TickValidator().check("EURUSD", T0, 1.3871, 1.3871) is None
    strict = TickValidator(allow_locked=False)
    assert strict.check("EURUSD", T0, 1.3871, 1.3871).code == LOCKED


def test_ticks_sharing_a_millisecond_with_different_prices_are_kept():
    validator = TickValidator()
    assert validator.check("EURUSD", *GOOD) is None
    assert validator.check("EURUSD", T0, 1.38711, 1.38726) is None
    assert validator.check("EURUSD", T0, 1.38711, 1.38727) is None
    assert validator.check("EURUSD", T0, 1.38711, 1.38727).code == DUPLICATE


def test_symbols_are_validated_independently():
    validator = TickValidator()
    assert validator.check("EURUSD", *GOOD) is None
    assert validator.check("NZDUSD", T0 - 1000, 0.86576, 0.86598) is None  # earlier, other symbol
    assert validator.check("NZDUSD", T0 - 2000, 0.86576, 0.86598).code == OUT_OF_ORDER


def test_a_real_gap_is_accepted_on_the_third_agreeing_jump():
    validator = TickValidator()
    assert validator.check("EURUSD", T0, 1.0000, 1.0002) is None
    assert validator.check("EURUSD", T0 + 1, 1.1000, 1.1002).code == JUMP
    assert validator.check("EURUSD", T0 + 2, 1.1010, 1.1012).code == JUMP
    assert validator.check("EURUSD", T0 + 3, 1.1005, 1.1007) is None  # the new level
    assert validator.check("EURUSD", T0 + 4, 1.1020, 1.1022) is None
    assert validator.check("EURUSD", T0 + 5, 1.0000, 1.0002).code == JUMP  # back is a jump now


def test_a_spike_is_rejected_and_disagreeing_jumps_never_confirm():
    validator = TickValidator()
    assert validator.check("EURUSD", T0, 1.0000, 1.0002) is None
    assert validator.check("EURUSD", T0 + 1, 1.2000, 1.2002).code == JUMP
    assert validator.check("EURUSD", T0 + 2, 1.0001, 1.0003) is None  # spike over, run reset
    assert validator.check("EURUSD", T0 + 3, 1.2000, 1.2002).code == JUMP
    assert validator.check("EURUSD", T0 + 4, 1.2010, 1.2012).code == JUMP
    assert validator.check("EURUSD", T0 + 5, 0.8000, 0.8002).code == JUMP  # disagrees: new run
    assert validator.check("EURUSD", T0 + 6, 1.2000, 1.2002).code == JUMP  # new run again
    assert validator.check("EURUSD", T0 + 7, 1.0001, 1.0003) is None


def test_snapshot_restore_continues_like_an_uninterrupted_run():
    ticks = [(T0, 1.0, 1.0002), (T0 + 1, 1.1, 1.1002), (T0 + 2, 1.101, 1.1012),
             (T0 + 3, 1.1005, 1.1007), (T0 + 3, 1.1005, 1.1007), (T0 + 2, 1.1, 1.1002)]
    uninterrupted = TickValidator()
    expected = [uninterrupted.check("EURUSD", *t) for t in ticks]
    first = TickValidator()
    got = [first.check("EURUSD", *t) for t in ticks[:2]]
    state = msgspec.json.decode(msgspec.json.encode(first.snapshot()))  # plain values only
    restarted = TickValidator()
    restarted.restore(state)
    got += [restarted.check("EURUSD", *t) for t in ticks[2:]]
    assert got == expected
    assert [r and r.code for r in expected] == [None, JUMP, JUMP, None, DUPLICATE, OUT_OF_ORDER]
