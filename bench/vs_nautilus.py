"""tradepipe's backtest against NautilusTrader's BacktestEngine (R10.2), in one run, on the
same real EURUSD ticks (../shared/data/eurusd_ticks_2014-05.csv.gz, 532,891 quotes).

(a) NautilusTrader 1.221.0 (``pip install '.[bench]'``): an EMA(10)/EMA(20) cross strategy on
    1-minute MID bars that the engine aggregates internally from the QuoteTicks (only for
    minutes that have quotes, as tradepipe's bar builder does); on a cross it
    flips the position with market orders of a fixed size (closing the open position first, as
    Nautilus's own examples/strategies/ema_cross.py does), on a simulated venue with a margin
    FX account. The ticks are read with tradepipe's reader and turned into QuoteTicks with
    Nautilus's QuoteTickDataWrangler before the clock starts (as Nautilus users prepare their
    data); only ``engine.run()`` is timed.
(b) tradepipe's whole pipeline (features, models, ensemble, validator, engine, ...).
(c) tradepipe with the models replaced by the EMA(10/20) cross signal: the same work as (a),
    through the same decision stage as (b).

Both tradepipe parts go through :func:`run_tradepipe` and are timed from the raw rows in
memory (read before the clock starts, like the QuoteTicks of (a)) to the last event. Each part
runs ``--repeat`` times; the median is reported. Goals: (c) faster than (a); (b) within 2x.

    python bench/vs_nautilus.py [--repeat 3] [--limit N] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple, TypeVar

import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import DataEngineConfig, LoggingConfig, StrategyConfig
from nautilus_trader.indicators import ExponentialMovingAverage
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType, QuoteTick
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId, TraderId, Venue
from nautilus_trader.model.instruments import CurrencyPair
from nautilus_trader.model.objects import Money
from nautilus_trader.persistence.wranglers import QuoteTickDataWrangler
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

from common import SHARED_DATA, machine_note, report, small_registry  # bench/ is on sys.path
from tradepipe.config import Settings
from tradepipe.models.registry import ModelRegistry
from tradepipe.pipeline import pipeline_services
from tradepipe.read.audit_log import AuditLog
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context, Service
from tradepipe.services.analytics import PerformanceAnalytics
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import RawTick, read_ticks

TICK_FILE = SHARED_DATA / "eurusd_ticks_2014-05.csv.gz"
FAST, SLOW = 10, 20
TRADE_SIZE = Decimal(100_000)  # EUR per order
STARTING_BALANCE = Money(1_000_000, USD)
SIM = Venue("SIM")

R = TypeVar("R")


def load_ticks(limit: int | None) -> list[RawTick]:
    """The file's quotes with tradepipe's reader (every part gets this same list)."""
    rows = read_ticks(TICK_FILE)
    return [row for row in itertools.islice(rows, limit) if type(row) is RawTick]


def timed_median(run: Callable[[], tuple[float, R]], repeat: int) -> tuple[float, R]:
    """Median of the seconds each ``run()`` measured itself (its set-up is not timed: that
    is why this is not common.median_time), and the last run's result."""
    seconds, result = [], None
    for _ in range(repeat):
        gc.collect()  # start each run without the previous run's garbage
        elapsed, result = run()
        seconds.append(elapsed)
    return statistics.median(seconds), result


# --- (a) NautilusTrader --------------------------------------------------------------------

class EmaCrossConfig(StrategyConfig, frozen=True):
    instrument_id: InstrumentId
    bar_type: BarType
    trade_size: Decimal
    fast_ema_period: int = FAST
    slow_ema_period: int = SLOW


class EmaCross(Strategy):
    """Nautilus's examples/strategies/ema_cross.py without its per-bar logging: on each bar,
    once both EMAs are warm, a change of the fast EMA's side of the slow one flips the
    position (close what is open, then a market order of ``trade_size`` the new way)."""

    def __init__(self, config: EmaCrossConfig) -> None:
        super().__init__(config)
        self.instrument: CurrencyPair | None = None
        self.fast_ema = ExponentialMovingAverage(config.fast_ema_period)
        self.slow_ema = ExponentialMovingAverage(config.slow_ema_period)
        self.side = 0  # +1 fast above slow, -1 below, 0 not known yet
        self.bars = 0
        self.crosses = 0

    def on_start(self) -> None:
        self.instrument = self.cache.instrument(self.config.instrument_id)
        self.register_indicator_for_bars(self.config.bar_type, self.fast_ema)
        self.register_indicator_for_bars(self.config.bar_type, self.slow_ema)
        self.subscribe_bars(self.config.bar_type)

    def on_bar(self, bar: Bar) -> None:
        self.bars += 1
        if not self.indicators_initialized():
            return
        fast, slow = self.fast_ema.value, self.slow_ema.value
        if fast == slow:
            return
        side = 1 if fast > slow else -1
        crossed = self.side != 0 and side != self.side
        self.side = side
        if not crossed:
            return
        self.crosses += 1
        instrument_id = self.config.instrument_id
        if not self.portfolio.is_flat(instrument_id):
            self.close_all_positions(instrument_id)
        self.submit_order(self.order_factory.market(
            instrument_id=instrument_id,
            order_side=OrderSide.BUY if side > 0 else OrderSide.SELL,
            quantity=self.instrument.make_qty(self.config.trade_size),
        ))

    def on_stop(self) -> None:
        self.close_all_positions(self.config.instrument_id)


class NautilusRun(NamedTuple):
    bars: int
    crosses: int
    orders: int
    fills: int
    positions: int
    pnl: float  # USD: account balance change (realised, after commissions) + unrealised


def nautilus_quotes(ticks: Sequence[RawTick], instrument: CurrencyPair) -> list[QuoteTick]:
    frame = pd.DataFrame(
        {"bid_price": [t.bid for t in ticks], "ask_price": [t.ask for t in ticks]},
        index=pd.to_datetime([t.ts_ms for t in ticks], unit="ms", utc=True),
    )
    return QuoteTickDataWrangler(instrument).process(frame)


def nautilus_engine(quotes: list[QuoteTick], instrument: CurrencyPair) -> tuple[BacktestEngine, EmaCross]:
    engine = BacktestEngine(BacktestEngineConfig(
        trader_id=TraderId("BENCH-001"),
        logging=LoggingConfig(log_level="ERROR"),
        # the same bars as tradepipe's: none for minutes without a quote (Nautilus's default
        # also builds flat bars through quiet minutes and weekends, ~40 % more here)
        data_engine=DataEngineConfig(time_bars_build_with_no_updates=False),
    ))
    engine.add_venue(SIM, oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                     base_currency=USD, starting_balances=[STARTING_BALANCE])
    engine.add_instrument(instrument)
    engine.add_data(quotes)
    strategy = EmaCross(EmaCrossConfig(
        instrument_id=instrument.id,
        bar_type=BarType.from_str(f"{instrument.id}-1-MINUTE-MID-INTERNAL"),
        trade_size=TRADE_SIZE,
    ))
    engine.add_strategy(strategy)
    return engine, strategy


def run_nautilus(quotes: list[QuoteTick], instrument: CurrencyPair) -> tuple[float, NautilusRun]:
    engine, strategy = nautilus_engine(quotes, instrument)
    start = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - start
    orders = engine.cache.orders()
    account = engine.portfolio.account(SIM)
    unrealised = engine.portfolio.unrealized_pnl(instrument.id)
    pnl = (account.balance_total(USD).as_double() - STARTING_BALANCE.as_double()
           + (unrealised.as_double() if unrealised is not None else 0.0))
    result = NautilusRun(
        bars=strategy.bars,
        crosses=strategy.crosses,
        orders=len(orders),
        fills=sum(1 for o in orders if o.is_closed and o.filled_qty > 0),
        positions=engine.cache.positions_total_count(),
        pnl=pnl,
    )
    engine.dispose()
    return seconds, result


# --- (b), (c) tradepipe --------------------------------------------------------------------

class TradepipeRun(NamedTuple):
    events: int
    bars: int
    signals: int
    orders: int
    fills: int
    pnl: float  # realised PnL of the closed positions, as the analytics service reports it


#: (c) trades like (a): a fixed 100,000 units on every cross, no stop (a 100 % one never
#: triggers), no kill switch or daily loss limit. (b) runs with the default settings.
NAUTILUS_LIKE = Settings(trading={"sizing": "fixed", "fixed_units": float(TRADE_SIZE), "default_stop_bps": 10_000,
                                  "max_drawdown": 0.99, "max_daily_loss": 0.99})


def services_for(strategy: str, registry: ModelRegistry | None, audit_dir: Path | None) -> list[Service]:
    """Everything after the data bridge, exactly as ``tradepipe.pipeline.run_pipeline``
    composes it (``pipeline_services``), with the audit trail writing a fresh log per run, or
    (``audit_dir`` None, for the breakdown row only) without it."""
    settings = NAUTILUS_LIKE if strategy == "ema-cross" else Settings()
    log = AuditLog(audit_dir / f"{strategy}-{time.monotonic_ns()}.db") if audit_dir is not None else None
    return pipeline_services(settings, strategy=strategy, registry=registry, audit_log=log)


def run_tradepipe(strategy: str, ticks: Sequence[RawTick], registry: ModelRegistry | None,
                  audit_dir: Path | None) -> tuple[float, TradepipeRun]:
    """One timed backtest of ``strategy`` ("models" = part b, "ema-cross" = part c) over the
    raw rows ``ticks``: (seconds from the first row to the last event, what it did)."""
    services = services_for(strategy, registry, audit_dir)
    kernel = InProcessPipeline(services)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    handle, feed_all = bridge.handle_tick, kernel.feed_all
    start = time.perf_counter()
    for tick in ticks:
        feed_all(handle(tick, ctx))
    kernel.close()
    for service in services:  # the model services' watchdogs, the audit trail's last batch
        close = getattr(service, "close", None)
        if close is not None:
            close()
    seconds = time.perf_counter() - start
    counts = kernel.counts
    return seconds, TradepipeRun(
        events=sum(counts.values()),
        bars=counts["BarClosed"],
        signals=counts["TradingSignalGenerated"],
        orders=counts["OrderPlaced"],
        fills=counts["OrderExecuted"],
        pnl=next(s for s in services if isinstance(s, PerformanceAnalytics)).summary()["realized_pnl"],
    )


# --- report --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N ticks")
    parser.add_argument("--write", type=Path, help="put the section into this markdown file")
    parser.add_argument("--registry", type=Path, help="models for (b) (default: small models trained on the shipped sample)")
    args = parser.parse_args()

    ticks = load_ticks(args.limit)
    n = len(ticks)
    instrument = TestInstrumentProvider.default_fx_ccy("EUR/USD", SIM)
    quotes = nautilus_quotes(ticks, instrument)

    parser_registry = args.registry
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(parser_registry) if parser_registry else small_registry(Path(tmp) / "models")
        nautilus_s, nautilus = timed_median(lambda: run_nautilus(quotes, instrument), args.repeat)
        ema_s, ema = timed_median(lambda: run_tradepipe("ema-cross", ticks, None, Path(tmp)), args.repeat)
        bare_s, bare = timed_median(lambda: run_tradepipe("ema-cross", ticks, None, None), args.repeat)
        models_s, models = timed_median(lambda: run_tradepipe("models", ticks, registry, Path(tmp)), args.repeat)

    def row(label: str, seconds: float, bars: int, signals: int, orders: int, fills: int, pnl: float | None) -> str:
        pnl_text = "n/a" if pnl is None else f"{pnl:,.2f}"
        return (f"| {label} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / n * 1e6:.2f} | "
                f"{nautilus_s / seconds:.2f} | {bars:,} | {signals:,} | {orders:,} | {fills:,} | {pnl_text} |")

    command = "python bench/vs_nautilus.py" + (f" --repeat {args.repeat}" if args.repeat != 3 else "") + (
        f" --limit {args.limit}" if args.limit else "")
    lines = [
        "## vs NautilusTrader",
        "",
        f"`{command}` on {datetime.now(timezone.utc):%Y-%m-%d}, {machine_note()}.",
        "",
        f"Real EURUSD ticks (May 2014, {n:,} quotes), every part in the same run, median of {args.repeat} runs. "
        f"EMA({FAST})/EMA({SLOW}) cross on 1-minute mid bars aggregated from the quotes (minutes with quotes only: "
        f"the same bars in both); NautilusTrader "
        f"1.221.0 BacktestEngine (only `engine.run()` timed, QuoteTicks built beforehand) flips a "
        f"{TRADE_SIZE:,} EUR position with market orders on a simulated margin FX venue. tradepipe is "
        f"timed from the raw rows in memory to the last event. x Nautilus > 1 means faster.",
        "",
        "| path | seconds | ticks/s | µs/tick | x Nautilus | 1m bars | crosses / signals | orders | fills | PnL (USD) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        row("(a) NautilusTrader, EMA cross", nautilus_s, nautilus.bars, nautilus.crosses, nautilus.orders,
            nautilus.fills, nautilus.pnl),
        row("(c) tradepipe, EMA-cross signal", ema_s, ema.bars, ema.signals, ema.orders, ema.fills, ema.pnl),
        row("(c) without the audit trail (breakdown, not the goal)", bare_s, bare.bars, bare.signals, bare.orders,
            bare.fills, bare.pnl),
    ]
    lines.append(row("(b) tradepipe, whole pipeline (models)", models_s, models.bars, models.signals,
                     models.orders, models.fills, models.pnl))
    lines += ["", "Both tradepipe parts run `tradepipe.pipeline.pipeline_services` (what `tradepipe backtest` runs) "
                  "with the audit trail writing its SQLite log, but no bus (events are handed over in process, "
                  "as Nautilus does). (c): 1m bars, the EMA-cross signal, validator, trading engine (fixed "
                  f"{TRADE_SIZE:,} units, flip on every cross, no stop, no kill switch: Nautilus's plain flip), "
                  "audit trail, analytics, notifier. (b): bars on 4 timeframes, the three feature services, three "
                  "model services (" + ("registry " + str(parser_registry) if parser_registry else
                  "small models trained on the shipped sample") + "), the ensemble and the same decision stage "
                  "plus the trade saga, with default settings (risk checks, stops, targets, horizon exits). "
                  "PnL: realised PnL of the closed positions; the models' PnL says nothing about skill here."]
    lines += [
        "",
        f"Goals (R10.2): (c) faster than (a): {'met' if ema_s < nautilus_s else 'not met'} "
        f"({nautilus_s / ema_s:.2f}x); (b) within 2x of (a): "
        + f"{'met' if models_s <= 2 * nautilus_s else 'not met'} ({models_s / nautilus_s:.2f}x the time).",
        "",
    ]
    report(lines, args.write)


if __name__ == "__main__":
    main()
