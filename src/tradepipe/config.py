"""One configuration model (R9.2): defaults < TOML file < environment variables < CLI flags.

The file is ``--config PATH``, else ``$TRADEPIPE_CONFIG``, else ``./tradepipe.toml`` if it
exists. Environment variables are ``TRADEPIPE_<SECTION>__<FIELD>``, e.g.
``TRADEPIPE_BUS__URL=memory://``. Unknown keys and bad values fail at start with the field's
dotted name (``bus.partitions``) and the sources that were read (file, environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from tradepipe.runtime.runner import RunnerConfig

DEFAULT_BUS_URL = "sqlite:///tradepipe.db"
CONFIG_ENV = "TRADEPIPE_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(Section):
    """Client settings of the Kafka backend (R2.6); a bus URL's ``?name=value`` overrides them."""

    linger_ms: float = Field(5.0, ge=0, description="producer: wait this long to fill a batch")
    batch_size: int = Field(1_000_000, ge=1, description="producer: bytes per partition batch")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    acks: Literal["all", "1", "0"] = "all"
    idempotence: bool = Field(True, description="idempotent producer; correctness does not rest on it "
                              "(consumers drop duplicate eventIds)")
    queue_max_messages: int = Field(1_000_000, ge=1, description="producer buffer bound: beyond it send() "
                                    "blocks (backpressure) until the broker takes more")
    session_timeout_ms: int = Field(6000, ge=500, description="group session; Tansu waits half of it before "
                                    "every assignment")
    heartbeat_interval_ms: int = Field(1000, ge=100)
    fetch_wait_max_ms: int = Field(10, ge=0, description="consumer: a fetch waits at most this for data "
                                   "(latency on brokers that answer only at the deadline)")
    message_max_bytes: int = Field(16_777_216, ge=1024, description="largest record, client and topic")
    librdkafka: dict[str, str] = Field(default_factory=dict, description="extra librdkafka properties, "
                                       "passed through unchanged (e.g. security.protocol, sasl.*)")


class RedisSettings(Section):
    """Client settings of the Redis Streams backend; a bus URL's ``?name=value`` overrides them."""

    prefix: str = Field("tradepipe", description="key prefix of every stream, group and offset key")
    maxlen: int | None = Field(1_000_000, ge=1, description="approximate entries kept per stream; trimming "
                               "never passes the oldest offset a live group has not committed")
    pipeline_size: int = Field(1000, ge=1, description="producer: XADDs per pipelined round trip")
    session_timeout_ms: int = Field(6000, ge=500, description="a member silent this long leaves its group")
    claim_idle_ms: int = Field(6000, ge=0, description="pending entries idle this long are claimed "
                               "(XAUTOCLAIM) from a dead consumer")
    pubsub_topics: tuple[str, ...] = Field(
        ("order-events", "performance-events", "system-events"),
        description="topics also fanned out on Redis pub/sub for live UIs")


class BusSettings(Section):
    url: str = DEFAULT_BUS_URL
    codec: Literal["json", "msgpack"] = "json"
    partitions: int = Field(4, ge=1, le=1024)
    retention_ms: dict[str, int | None] = Field(
        default_factory=lambda: {"order-events": 7 * 365 * 86_400_000},
        description="per topic; None or absent = keep forever (the seed keeps the audit stream 7 years)")
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()

    def backend_options(self) -> dict[str, Any]:
        """The settings of this URL's backend, for :func:`tradepipe.bus.open_bus`."""
        scheme = self.url.split("://", 1)[0].lower()
        section = {"kafka": self.kafka, "redis": self.redis}.get(scheme)
        return section.model_dump() if section is not None else {}

    def open(self, *, create: bool = True):
        """The bus this section names, with its backend's settings."""
        from tradepipe.bus import open_bus

        return open_bus(self.url, create=create, options=self.backend_options())

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        from tradepipe.bus import SCHEMES

        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in SCHEMES:
            raise ValueError(f"bus URL must start with one of {', '.join(s + '://' for s in SCHEMES)}; got {url!r}")
        return url


class RunnerSettings(Section):
    batch_size: int = Field(500, ge=1)
    poll_timeout_s: float = Field(0.1, ge=0)
    checkpoint_every: int = Field(1000, ge=1)
    max_attempts: int = Field(3, ge=1)
    retry_initial_s: float = Field(0.01, ge=0)
    retry_max_s: float = Field(1.0, ge=0)
    dedup_window: int = Field(10_000, ge=1)
    flush_timeout_s: float = Field(10.0, gt=0, description="a flush slower than this is a bus failure (retried)")
    bus_retry_max_s: float = Field(5.0, gt=0, description="longest wait between retries while the broker is down")

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(**self.model_dump())


class DataSettings(Section):
    max_jump: float = Field(0.05, gt=0, lt=1, description="largest accepted tick-to-tick mid move, as a fraction")
    allow_locked: bool = Field(True, description="accept ask == bid quotes")


class ModelSettings(Section):
    registry: str = Field("models", description="model registry directory")
    kinds: tuple[Literal["xgboost", "lightgbm", "lstm"], ...] = Field(
        ("xgboost", "lightgbm", "lstm"), min_length=1, description="model services to run")
    version: str = Field("latest", description='registry version each service loads: "latest" or a number')
    timeframe: str = Field("1m", description="bars the models are trained on and predict")
    horizon: int = Field(5, ge=1, description="bars ahead the label looks")
    dead_band_bps: float = Field(0.35, ge=0, description="|return| below this (basis points) is HOLD")
    seed: int = 42
    join_deadline_s: float = Field(5.0, gt=0, description="wait for a bar's feature groups (event time)")
    breaker_threshold: int = Field(5, ge=1)
    breaker_recovery_s: float = Field(60.0, gt=0)
    inference_timeout_s: float = Field(1.0, gt=0, description="a prediction slower than this is a failure")
    inference_guard: Literal["watchdog", "thread"] = Field(
        "watchdog", description="how a hung model is stopped: watchdog = ONNX Runtime's terminate flag set "
        "by one watchdog thread (~1 us a call); thread = each call on a worker thread, abandoned on timeout "
        "(also survives hangs outside ONNX Runtime; 100-400 us a call here)")
    fallback_fresh_s: float = Field(120.0, ge=0, description="a last good prediction younger than this is reused")

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each kind once; got {list(kinds)}")
        return kinds

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if version != "latest" and not version.isdigit():
            raise ValueError(f'must be "latest" or a version number; got {version!r}')
        return version

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, timeframe: str) -> str:
        from tradepipe.features.bars import TIMEFRAMES

        if timeframe not in TIMEFRAMES:
            raise ValueError(f"must be one of {', '.join(TIMEFRAMES)}; got {timeframe!r}")
        return timeframe


class EnsembleSettings(Section):
    deadline_s: float = Field(
        6.0, gt=0, description="wait for the models of one correlationId (event time); at least "
        "models.join_deadline_s, or a model whose join went partial always misses the ensemble")
    hit_window: int = Field(200, ge=1, description="resolved predictions in each model's rolling hit rate")
    prior_weight: float = Field(20.0, ge=0, description="pseudo-observations of the validation accuracy")


RuleName = Literal[
    "confidence_floor", "spread_ceiling", "volatility_regime", "model_agreement", "max_trades_per_hour",
    "trading_hours", "candlestick_confirmation",
]
ALL_RULES: tuple[RuleName, ...] = RuleName.__args__


class ValidatorSettings(Section):
    """The pattern validator's rules (R7.1). Every rule in ``rules`` is evaluated for every
    signal; a signal passes when all of them pass (a HOLD signal never passes: nothing to
    trade). Live changes arrive as ConfigurationUpdated events with ``validator.<field>`` keys."""

    rules: tuple[RuleName, ...] = Field(ALL_RULES, description="rules a signal must pass")
    min_confidence: float = Field(
        0.35, ge=0, le=1, description="ensemble confidence floor (3-class models: ~0.35 when all three agree)")
    max_spread_bps: float = Field(3.0, gt=0, description="mean spread of the signal's bar, in bp of the price")
    min_atr_bps: float = Field(0.5, ge=0, description="ATR(14) of the bar below this (bp of price) is too quiet")
    max_atr_bps: float = Field(50.0, gt=0, description="ATR(14) above this (bp of price) is too wild")
    min_agreement: float = Field(0.5, ge=0, le=1, description="share of the ensemble weight agreeing with the signal")
    max_trades_per_hour: int = Field(6, ge=0, description="validated signals per symbol in the last hour (event time)")
    trading_hours: tuple[int, int] = Field((0, 24), description="UTC [start, end) hours; start > end wraps midnight")
    trading_days: tuple[int, ...] = Field((0, 1, 2, 3, 4), description="UTC weekdays traded, Monday = 0")
    require_candle_pattern: bool = Field(
        False, description="candlestick confirmation also needs a pattern agreeing with the signal "
        "(by default it fails only on a contradicting one)")

    @model_validator(mode="after")
    def _consistent(self) -> "ValidatorSettings":
        start, end = self.trading_hours
        if not (0 <= start <= 24 and 0 <= end <= 24):
            raise ValueError(f"trading_hours must be hours in 0..24; got {list(self.trading_hours)}")
        if self.min_atr_bps >= self.max_atr_bps:
            raise ValueError(f"min_atr_bps ({self.min_atr_bps:g}) must be below max_atr_bps ({self.max_atr_bps:g})")
        if any(not 0 <= d <= 6 for d in self.trading_days):
            raise ValueError(f"trading_days must be weekdays 0..6; got {list(self.trading_days)}")
        return self


class TradingSettings(Section):
    """The trading engine (R7.2): sizing, pre-trade risk, the broker. Prices and PnL are in
    each symbol's quote currency; the account adds them up as one currency (true for the
    XXXUSD pairs shipped)."""

    broker: Literal["paper", "mt5"] = "paper"
    initial_equity: float = Field(100_000.0, gt=0)
    sizing: Literal["fixed", "risk"] = Field(
        "risk", description="fixed = fixed_units per order; risk = risk_per_trade of equity lost at the stop")
    fixed_units: float = Field(10_000.0, gt=0)
    risk_per_trade: float = Field(0.0025, gt=0, lt=1, description="fraction of equity risked between entry and stop")
    lot_step: float = Field(1_000.0, gt=0, description="order sizes are rounded down to this many units")
    max_order_units: float = Field(
        100_000.0, gt=0, description="largest single order: risk sizing from a tight stop (1m ATR) would ask for millions")
    default_stop_bps: float = Field(10.0, gt=0, description="stop distance (bp of price) when the signal has no stop")
    min_stop_bps: float = Field(
        5.0, ge=0, description="a closer stop is moved out to this (bp of the entry): a 1m-ATR stop sits inside the spread")
    max_position_units: float = Field(300_000.0, gt=0, description="largest open position per symbol, in units")
    max_gross_exposure: float = Field(1_000_000.0, gt=0, description="sum of open notionals, quote currency")
    max_daily_loss: float = Field(0.02, gt=0, lt=1, description="no new orders after losing this fraction of the day's start equity")
    max_drawdown: float = Field(0.05, gt=0, lt=1, description="kill switch: drawdown from peak equity that halts trading")
    flatten_on_halt: bool = Field(True, description="close every position when the kill switch trips")
    slippage_bps: float = Field(0.1, ge=0, description="paper fills this far (bp of price) beyond the bid/ask")
    commission_per_million: float = Field(30.0, ge=0, description="commission per 1M notional, each side")
    exit_after_bars: int | None = Field(
        None, ge=1, description="close a position after this many bars of its signal's timeframe; default models.horizon")
    mt5_magic: int = Field(20_261_124, description="MT5 magic number marking our orders")
    mt5_deviation_points: int = Field(10, ge=0, description="largest price deviation MT5 may fill at, in points")


class SagaSettings(Section):
    """Timeouts of the trading workflow's steps (R3.4), in event time (wall time live)."""

    signal_timeout_s: float = Field(15.0, gt=0, description="features of a bar -> the ensemble's signal")
    validation_timeout_s: float = Field(5.0, gt=0, description="signal -> the validator's verdict")
    order_timeout_s: float = Field(5.0, gt=0, description="validated signal -> an order placed (or refused)")
    fill_timeout_s: float = Field(10.0, gt=0, description="order placed -> its fill")


class AuditSettings(Section):
    path: str = Field("tradepipe-audit.db", description="the audit trail's SQLite file")
    cache_events: int = Field(50_000, ge=100, description="recent upstream events kept to resolve causal chains")


class AnalyticsSettings(Section):
    interval_s: float = Field(3600.0, gt=0, description="event time between PerformanceCalculated events")
    sample_s: float = Field(3600.0, gt=0, description="equity sampling period of Sharpe and Sortino (event time)")
    report_dir: str = Field("reports/latest", description="where `tradepipe run` writes its report")


class ReadSettings(Section):
    """The read side (R8.1): where the projections live."""

    store: str = Field("sqlite:///tradepipe-read.db", description="transactional projections: sqlite:///PATH "
                       "or postgresql://user@host:port/db")
    analytics: str = Field("chdb:///tradepipe-analytics", description="analytics store: chdb:///DIR (embedded "
                           "ClickHouse) or clickhouse://user:password@host:8123/db (a ClickHouse server)")
    batch_size: int = Field(1000, ge=1, description="events applied per projection transaction")


class ApiSettings(Section):
    """The API gateway (R8.2)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: key id -> "sha256:<hex digest of the key>"; `tradepipe api hash-key` prints one
    keys: dict[str, str] = Field(default_factory=dict, description="API keys allowed to change state, hashed")
    rate_limit_per_minute: int = Field(600, ge=1, description="requests per client (key or address) per minute")
    sync_timeout_s: float = Field(5.0, gt=0, description="?sync=true waits this long for the response event")
    dashboard_history: int = Field(100_000, ge=0, description="records per partition the dashboard replays "
                                   "when the process starts, so it opens on recent history, not a blank page")


class AlertSettings(Section):
    """Thresholds of the seed's alert rules (R8.4), evaluated live and in the Prometheus rules."""

    processing_ms: float = Field(100.0, gt=0, description="event processing time above this alerts")
    consumer_lag: int = Field(1000, ge=0, description="records behind on a partition")
    validation_failure_rate: float = Field(0.05, ge=0, le=1, description="malformed (dead-lettered) input share")
    model_accuracy: float = Field(0.60, ge=0, le=1, description="rolling hit rate of a model below this alerts")
    signal_accuracy: float = Field(0.70, ge=0, le=1, description="rolling hit rate of validated signals")
    drawdown: float = Field(0.02, gt=0, lt=1, description="drawdown from peak equity")
    execution_failure_rate: float = Field(0.01, ge=0, le=1, description="rejected share of orders")
    min_samples: int = Field(20, ge=1, description="a rate is judged only over at least this many events")


class TelegramSettings(Section):
    """The Telegram bot (R8.6): notifications and commands, only for the listed chats."""

    token: SecretStr = Field(SecretStr(""), description="bot token (TRADEPIPE_TELEGRAM__TOKEN); empty = the bot is off")
    base_url: str = Field("https://api.telegram.org", description="Bot API server (a local one for tests)")
    chat_ids: tuple[int, ...] = Field((), description="chats that get notifications and may give commands")
    poll_timeout_s: int = Field(20, ge=0, le=50, description="getUpdates long-poll timeout")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="TRADEPIPE_", env_nested_delimiter="__", validate_default=True
    )

    bus: BusSettings = BusSettings()
    runner: RunnerSettings = RunnerSettings()
    data: DataSettings = DataSettings()
    models: ModelSettings = ModelSettings()
    ensemble: EnsembleSettings = EnsembleSettings()
    validator: ValidatorSettings = ValidatorSettings()
    trading: TradingSettings = TradingSettings()
    saga: SagaSettings = SagaSettings()
    audit: AuditSettings = AuditSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    read: ReadSettings = ReadSettings()
    api: ApiSettings = ApiSettings()
    alerts: AlertSettings = AlertSettings()
    telegram: TelegramSettings = TelegramSettings()

    @model_validator(mode="after")
    def _ensemble_waits_for_partial_joins(self) -> "Settings":
        if self.ensemble.deadline_s < self.models.join_deadline_s:
            raise ValueError(
                f"ensemble.deadline_s ({self.ensemble.deadline_s:g}) must be at least models.join_deadline_s "
                f"({self.models.join_deadline_s:g}): a model answering at its join deadline would always miss "
                "the ensemble")
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # first wins: CLI values, then the environment, then the TOML file (model_config["toml_file"])
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(ValueError):
    """Bad configuration; the message names each bad field."""


SectionT = TypeVar("SectionT", bound=Section)


def apply_changes(section: SectionT, prefix: str, changes: Mapping[str, Any]) -> SectionT:
    """``section`` with the live changes of a ConfigurationUpdated event applied: the keys
    ``"<prefix>.<field>"`` (e.g. ``validator.min_confidence``); other keys are not for this
    section and are ignored. All or nothing: raises ConfigError naming every bad key (unknown
    field, invalid value) and the section is left as it was."""
    start = prefix + "."
    mine = {key[len(start):]: value for key, value in changes.items() if key.startswith(start)}
    if not mine:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **mine})
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else f"{prefix}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"configuration update refused: {problems}") from None


def load_settings(path: str | Path | None = None, **overrides: dict) -> Settings:
    """Load settings from ``path`` (or the default file) and the environment; ``overrides``
    are sections of values from CLI flags, e.g. ``bus={"url": "memory://"}``."""
    chosen = path or os.environ.get(CONFIG_ENV) or ("tradepipe.toml" if Path("tradepipe.toml").exists() else None)
    if chosen is not None and not Path(chosen).is_file():
        raise ConfigError(f"config file {chosen} does not exist")
    settings_cls = Settings
    if chosen:
        settings_cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": chosen}})
    where = f" (config file {chosen}, environment TRADEPIPE_*)" if chosen else " (environment TRADEPIPE_*)"
    try:
        base = settings_cls()
        if not overrides:
            return base
        merged = base.model_dump()
        for section, values in overrides.items():
            merged[section].update({k: v for k, v in values.items() if v is not None})
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            # a cross-field check has no location: its message names the fields itself
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read config file {chosen}: {exc}") from None
