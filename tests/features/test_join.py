"""FeatureJoin: one vector per (symbol, timeframe, bar), with a deadline in event time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tradepipe.events import FeaturesCalculated
from tradepipe.features.join import FEATURE_GROUPS, FeatureJoin
from tradepipe.runtime import Context

BAR = datetime(2014, 5, 5, 10, 0, tzinfo=timezone.utc)


def features(group: str, values: dict, *, bar=BAR, symbol="EURUSD", timeframe="1m", at=None):
    ctx = Context(group)
    ctx.begin(None, key=f"{group}{bar}{symbol}{timeframe}".encode())
    ctx.clock.advance(at or bar + timedelta(minutes=1))
    return ctx.emit(FeaturesCalculated, symbol=symbol, timeframe=timeframe, bar_time=bar, group=group, features=values)


def test_the_three_groups_of_a_bar_become_one_vector():
    join = FeatureJoin()
    assert join.add(features("feature-engineering", {"rsi": 55.0, "macd": None})) is None
    assert join.add(features("market-microstructure", {"tick_count": 12.0})) is None
    joined = join.add(features("technical-analysis", {"atr_14": 0.0002}))
    assert joined is not None and joined.complete and join.in_flight == 0
    assert joined.features == {"rsi": 55.0, "macd": None, "atr_14": 0.0002, "tick_count": 12.0}
    assert joined.groups == FEATURE_GROUPS and joined.missing == ()
    assert (joined.symbol, joined.timeframe, joined.bar_time) == ("EURUSD", "1m", BAR)


def test_bars_symbols_and_timeframes_are_kept_apart():
    join = FeatureJoin()
    join.add(features("feature-engineering", {"rsi": 1.0}))
    join.add(features("feature-engineering", {"rsi": 2.0}, symbol="NZDUSD"))
    join.add(features("feature-engineering", {"rsi": 3.0}, timeframe="5m"))
    join.add(features("feature-engineering", {"rsi": 4.0}, bar=BAR + timedelta(minutes=1)))
    assert join.in_flight == 4
    join.add(features("technical-analysis", {"atr_14": 1.0}, symbol="NZDUSD"))
    joined = join.add(features("market-microstructure", {"tick_count": 1.0}, symbol="NZDUSD"))
    assert joined.symbol == "NZDUSD" and joined.features["rsi"] == 2.0 and join.in_flight == 3


def test_the_deadline_hands_out_partial_vectors_naming_what_is_missing():
    join = FeatureJoin(deadline=timedelta(seconds=5))
    join.add(features("feature-engineering", {"rsi": 50.0}))
    join.add(features("technical-analysis", {"atr_14": 0.1}))
    first_seen = BAR + timedelta(minutes=1)
    assert join.expire(first_seen + timedelta(seconds=4)) == []
    [late] = join.expire(first_seen + timedelta(seconds=5))
    assert not late.complete and late.missing == ("market-microstructure",)
    assert late.features == {"rsi": 50.0, "atr_14": 0.1} and join.in_flight == 0


def test_a_feature_name_published_by_two_groups_is_an_error():
    join = FeatureJoin(groups=("a", "b"))
    join.add(features("a", {"x": 1.0}))
    with pytest.raises(ValueError, match="'x' is published by more than one group"):
        join.add(features("b", {"x": 2.0}))


def test_other_groups_are_ignored():
    join = FeatureJoin()
    assert join.add(features("some-other-service", {"x": 1.0})) is None and join.in_flight == 0


def test_last_names_the_completing_event_and_a_snapshot_restores_the_bars_in_flight():
    import msgspec

    join = FeatureJoin(deadline=timedelta(seconds=5))
    first = features("technical-analysis", {"atr_14": 1.0}, at=BAR + timedelta(minutes=1))
    join.add(first)
    join.add(features("feature-engineering", {"rsi": 1.0}, symbol="NZDUSD"))
    fe = features("feature-engineering", {"rsi": 50.0}, at=BAR + timedelta(minutes=1, seconds=1))
    join.add(fe)

    restored = FeatureJoin(deadline=timedelta(seconds=5))
    restored.restore(msgspec.json.decode(msgspec.json.encode(join.snapshot())))
    assert restored.in_flight == 2
    # same deadline (from the first group's time) and the same latest arrival after a restore
    due = BAR + timedelta(minutes=1, seconds=5)
    [a] = [j for j in join.expire(due) if j.symbol == "EURUSD"]
    [b] = [j for j in restored.expire(due) if j.symbol == "EURUSD"]
    assert a == b and a.last == fe and a.missing == ("market-microstructure",)

    complete = FeatureJoin()
    complete.add(first)
    mm = features("market-microstructure", {"tick_count": 3.0})
    complete.add(mm)
    assert complete.add(fe).last == fe
