"""One configuration model (R9.2): defaults < TOML file < environment variables < CLI flags.

The file is ``--config PATH``, else ``$TRADEPIPE_CONFIG``, else ``./tradepipe.toml`` if it
exists. Environment variables are ``TRADEPIPE_<SECTION>__<FIELD>``, e.g.
``TRADEPIPE_BUS__URL=memory://``. Unknown keys and bad values fail at start with the field's
dotted name (``bus.partitions``) and the sources that were read (file, environment).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from tradepipe.runtime.runner import RunnerConfig

DEFAULT_BUS_URL = "sqlite:///tradepipe.db"
CONFIG_ENV = "TRADEPIPE_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BusSettings(Section):
    url: str = DEFAULT_BUS_URL
    codec: Literal["json", "msgpack"] = "json"
    partitions: int = Field(4, ge=1, le=1024)

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="TRADEPIPE_", env_nested_delimiter="__", validate_default=True
    )

    bus: BusSettings = BusSettings()
    runner: RunnerSettings = RunnerSettings()
    data: DataSettings = DataSettings()
    models: ModelSettings = ModelSettings()
    ensemble: EnsembleSettings = EnsembleSettings()

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
