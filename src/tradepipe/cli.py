"""The ``tradepipe`` command (R9.1)."""

from __future__ import annotations

import gzip
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tradepipe.bus import Bus, BusError, open_bus
from tradepipe.config import ConfigError, Settings, load_settings
from tradepipe.events.codec import get_codec

app = typer.Typer(help="tradepipe: an event-driven AI trading pipeline.", no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Inspect the bus's topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="The event schema registry: list, export, check compatibility.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML config file (default: ./tradepipe.toml if present).")]
BusOption = Annotated[Optional[str], typer.Option(
    "--bus", help="Bus URL: sqlite:///file.db (default), memory://, kafka://host:port[,host:port] or redis://host:port/db.")]


def _utc(at: datetime | None) -> datetime | None:
    """A command-line time: UTC when it names no zone."""
    return at if at is None or at.tzinfo else at.replace(tzinfo=timezone.utc)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def settings_or_exit(config: Path | None, bus_url: str | None = None, **overrides: dict) -> Settings:
    """Settings with the command's flags on top (None = not given), or exit naming the bad field."""
    try:
        return load_settings(config, bus={"url": bus_url}, **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def open_shared_bus_or_exit(settings: Settings) -> Bus:
    """The configured bus for a process that shares it with others (a service, the API)."""
    if settings.bus.url.startswith("memory://"):
        raise fail("a memory:// bus lives in one process: give --bus kafka://..., redis://... or sqlite:///...")
    return open_or_exit(settings, create=True)


def open_or_exit(settings: Settings, *, create: bool) -> Bus:
    """The configured bus (with its backend's settings), or exit with the reason."""
    try:
        return settings.bus.open(create=create)
    except BusError as exc:
        raise fail(str(exc)) from None


# --- run and backtest ---------------------------------------------------------------------------

ReportOption = Annotated[Optional[Path], typer.Option("--report", help="Report directory (default: analytics.report_dir).")]
AuditOption = Annotated[Optional[Path], typer.Option("--audit", help="Audit trail log (default: audit.path).")]
SummaryOption = Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary to this JSON file.")]
FreshOption = Annotated[bool, typer.Option("--fresh", help="Delete an existing SQLite bus file and audit log first.")]


@app.command()
def run(
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Tick or bar files (CSV, .gz); default: the shipped sample.")] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Symbol of the data (default: from each file name).")] = None,
    bus: BusOption = None,
    config: ConfigOption = None,
    summary_json: SummaryOption = None,
    fresh: FreshOption = False,
    append: Annotated[bool, typer.Option("--append", help="Add to a bus that already holds market data.")] = False,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Model registry directory (default: models.registry, ./models).")] = None,
    no_models: Annotated[bool, typer.Option("--no-models", help="Stop at the features: no models, no trading.")] = False,
    report: ReportOption = None,
    audit: AuditOption = None,
) -> None:
    """The whole pipeline on recorded ticks or bars (default: the shipped sample): data bridge,
    bars, features, models, ensemble, validator, paper trading, saga, audit trail, analytics;
    every event on the bus, then a summary and an HTML report. With an empty model registry,
    small models are trained on the data first (so the run is in-sample: a demonstration)."""
    from tradepipe.models.registry import ModelRegistry
    from tradepipe.sources import sample_paths

    settings = settings_or_exit(config, bus, models={"registry": str(registry) if registry is not None else None})
    paths = _existing(list(data) if data else sample_paths())
    notes = []
    models = None
    if not no_models:
        models = ModelRegistry(settings.models.registry)
        if models.is_empty() and not _train_small_models(paths, symbol, settings):
            models = None
    if models is not None:
        from tradepipe.pipeline import in_sample

        overlap = in_sample(_cards_or_exit(models, settings), paths, symbol)
        if overlap:  # run never refuses (it is the demonstration), but says so
            notes.append("In-sample: " + "; ".join(overlap) + ". These figures show the pipeline working, not "
                         "an edge; `tradepipe backtest` tests models on data they were not trained on.")
    _execute(settings, paths, symbol=symbol, strategy="features" if models is None else "models", registry=models,
             report=report, audit=audit, summary_json=summary_json, fresh=fresh, append=append, notes=notes,
             title="tradepipe run")


@app.command()
def backtest(
    data: Annotated[list[Path], typer.Option("--data", help="Tick or bar files (CSV, .gz, Parquet); repeat for more.")],
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Symbol of the data (default: from each file name).")] = None,
    from_time: Annotated[Optional[datetime], typer.Option("--from", help="Skip data before this ISO time (UTC if no zone).")] = None,
    to_time: Annotated[Optional[datetime], typer.Option("--to", help="Skip data from this ISO time on.")] = None,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Model registry directory (default: models.registry).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="models (the pipeline) or ema-cross (EMA 10/20 on 1m bars instead of features and models).")] = "models",
    bus: BusOption = None,
    config: ConfigOption = None,
    report: ReportOption = None,
    audit: AuditOption = None,
    summary_json: SummaryOption = None,
    fresh: FreshOption = False,
    allow_in_sample: Annotated[bool, typer.Option("--allow-in-sample", help="Run even on data the models were trained on (the report says so).")] = False,
) -> None:
    """The whole pipeline on any recorded data with models from the registry. It never trains:
    models must exist (`tradepipe train`), and data they were trained on is refused unless
    --allow-in-sample, because a backtest on it measures memory, not skill."""
    from tradepipe.models.registry import ModelRegistry
    from tradepipe.pipeline import in_sample

    if strategy not in ("models", "ema-cross"):
        raise fail(f"--strategy must be models or ema-cross, not {strategy!r}")
    start, end = _utc(from_time), _utc(to_time)
    if start is not None and end is not None and start >= end:
        raise fail(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    settings = settings_or_exit(config, bus, models={"registry": str(registry) if registry is not None else None})
    paths = _existing(data)
    notes = []
    models = None
    if strategy == "models":
        models = ModelRegistry(settings.models.registry)
        if models.is_empty():
            raise fail(f"no models in {settings.models.registry}: backtest never trains on the data it tests; "
                       "train first (`tradepipe train --data OTHER_DATA`) or pass --registry")
        cards = _cards_or_exit(models, settings)
        overlap = in_sample(cards, paths, symbol, start, end)
        if overlap and not allow_in_sample:
            raise fail("the models were trained on this data: " + "; ".join(overlap) + ". Backtest other "
                       "data or another period (--from/--to), or pass --allow-in-sample to run anyway (the report "
                       "will say so)")
        if overlap:
            notes.append("In-sample (--allow-in-sample): " + "; ".join(overlap)
                         + ". These figures measure memory, not skill.")
    _execute(settings, paths, symbol=symbol, strategy=strategy, registry=models, start=start, end=end,
             report=report, audit=audit, summary_json=summary_json, fresh=fresh, append=False, notes=notes,
             title=f"tradepipe backtest ({strategy})")


@app.command()
def service(
    name: Annotated[str, typer.Argument(help="Service to run, e.g. trading-engine; `tradepipe service list` lists them.")],
    bus: BusOption = None,
    config: ConfigOption = None,
    group: Annotated[Optional[str], typer.Option("--group", help="Consumer group (default: the service's name).")] = None,
    instance: Annotated[Optional[str], typer.Option("--instance", help="Instance id, stable across restarts: a restart resumes its checkpoint (default: NAME-0).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="/health and /metrics port (default: the service's seed port; 0: any free port).")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Checkpoint store: sqlite:///file.db (default for kafka://: ./tradepipe-state.db) or redis://host:port/db (default for redis://: the bus's Redis).")] = None,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Model registry directory (default: models.registry).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="models or ema-cross: which services the deployment has.")] = "models",
    audit: AuditOption = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="data-bridge: tick or bar files to replay; repeat for more.")] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="data-bridge: symbol of the data (default: from each file name).")] = None,
    from_time: Annotated[Optional[datetime], typer.Option("--from", help="data-bridge: skip data before this ISO time (UTC if no zone).")] = None,
    to_time: Annotated[Optional[datetime], typer.Option("--to", help="data-bridge: skip data from this ISO time on.")] = None,
    lockstep: Annotated[bool, typer.Option("--lockstep", help="data-bridge: after each bar-closing tick, wait until every service has consumed everything (a deterministic distributed backtest).")] = False,
) -> None:
    """One pipeline service as its own process on a bus, until SIGTERM/SIGINT (then it
    checkpoints and leaves its group). The data bridge replays --data and exits when done."""
    from tradepipe.distributed import default_port
    from tradepipe.pipeline import gateway_factories, service_factories

    settings = settings_or_exit(config, bus, models={"registry": str(registry) if registry is not None else None})
    if strategy not in ("models", "ema-cross"):
        raise fail(f"--strategy must be models or ema-cross, not {strategy!r}")
    audit_path = Path(audit or settings.audit.path)
    try:
        factories = service_factories(settings, strategy=strategy, registry=settings.models.registry, audit_path=audit_path)
    except Exception as exc:
        raise fail(f"cannot set up the {strategy} services: {exc}") from None
    factories |= gateway_factories(settings)
    names = ["data-bridge", *factories]
    if name == "list":
        for known in names:
            out.print(f"{known:24} port {default_port(known)}", highlight=False)
        return
    if name not in names:
        raise fail(f"no service {name!r}; services: {', '.join(names)}")
    port = default_port(name) if port is None else port
    bus_obj = open_shared_bus_or_exit(settings)
    bot = None
    try:
        ensure_topics_or_exit(bus_obj, settings)
        checkpoints = _state_store(settings, state, bus_obj)
        if name == "data-bridge":
            runner, group_name, instance_id = _bridge_runner(bus_obj, settings, checkpoints, data, symbol, from_time, to_time,
                                                             lockstep, instance, list(factories))
        else:
            from tradepipe.runtime.runner import ServiceRunner

            built = factories[name]()
            if name == "notifier":
                bot = _telegram_bot(settings, bus_obj, built)
            runner = ServiceRunner(built, bus_obj, group=group, checkpoints=checkpoints,
                                   config=settings.runner.runner_config(), instance_id=instance)
            group_name, instance_id = runner.group, runner.instance_id
        _host(runner, name, instance_id, group_name, port)
    finally:
        if bot is not None:
            bot.stop()
        bus_obj.close()


def _telegram_bot(settings: Settings, bus_obj: Bus, notifier):
    """With telegram.token set, the notifier's messages also go to telegram.chat_ids, and a
    thread answers their commands from the read store (read.store). None without a token."""
    if not settings.telegram.token.get_secret_value():
        return None
    from tradepipe.ops.telegram import BotApiError, TelegramBot
    from tradepipe.read.sql import StoreError

    try:
        bot = TelegramBot.from_settings(settings, bus_obj)
    except StoreError as exc:
        raise fail(f"read.store: {exc}") from None
    try:
        me = bot.start()
    except BotApiError as exc:
        bot.stop()
        raise fail(f"telegram: {exc} (check telegram.token and telegram.base_url)") from None
    notifier.sinks += (bot.sink,)
    err.print(f"telegram: @{me.get('username')} notifies and answers chats "
              f"{', '.join(map(str, settings.telegram.chat_ids)) or '(none: telegram.chat_ids is empty)'}",
              highlight=False)
    return bot


def ensure_topics_or_exit(bus_obj: Bus, settings: Settings) -> None:
    from tradepipe.runtime.runner import ensure_topics

    try:
        ensure_topics(bus_obj, partitions=settings.bus.partitions, retention_ms=settings.bus.retention_ms)
    except BusError as exc:
        raise fail(str(exc)) from None


def _state_store(settings: Settings, state: str | None, bus_obj: Bus):
    from tradepipe.runtime.store import checkpoint_store_for, checkpoint_store_from_url

    url = settings.bus.url
    if state is None and url.startswith("kafka://"):
        state = "sqlite:///tradepipe-state.db"
    elif state is None and url.startswith("redis://"):  # the bus's own server and key prefix
        state = url.split("?", 1)[0] + f"?prefix={bus_obj.options.prefix}"
    try:
        return checkpoint_store_from_url(state) if state is not None else checkpoint_store_for(bus_obj)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _bridge_runner(bus_obj, settings, checkpoints, data, symbol, from_time, to_time, lockstep, instance, names):
    from tradepipe.distributed import BridgeReplay, Quiescence, lockstep_groups

    if not data:
        raise fail("the data bridge needs --data FILE (live sources run inside `tradepipe run` for now)")
    start, end = _utc(from_time), _utc(to_time)
    waits = Quiescence(bus_obj, lockstep_groups(names)) if lockstep else None
    instance_id = instance or "data-bridge-0"
    replay = BridgeReplay(bus_obj, settings, _existing(data), checkpoints, symbol=symbol, start=start, end=end,
                          instance_id=instance_id, lockstep=waits)
    return replay, None, instance_id


def _host(runner, name: str, instance_id: str, group: str | None, port: int | None) -> None:
    from tradepipe.distributed import BridgeReplay
    from tradepipe.runtime.host import ServiceHost

    try:
        host = ServiceHost(runner, service=name, instance=instance_id, group=group, port=port)
    except OSError as exc:
        runner.close()
        raise fail(f"cannot serve /health and /metrics on port {port}: {exc} (pass --port)") from None
    err.print(f"{name} ({instance_id}) running; health: http://127.0.0.1:{host.port}/health", highlight=False)
    done = (lambda: runner.done) if isinstance(runner, BridgeReplay) else None
    host.run(until=done)
    err.print(f"{name} ({instance_id}) stopped: {msgspec.to_builtins(runner.stats)}", highlight=False)


def _existing(paths: list[Path]) -> list[Path]:
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise fail(f"no such data file: {', '.join(missing)}")
    return paths


def _cards_or_exit(registry, settings: Settings) -> list:
    from tradepipe.models.registry import ModelLoadError

    try:
        return [registry.card(*registry.resolve(kind, settings.models.version)) for kind in settings.models.kinds]
    except ModelLoadError as exc:
        raise fail(f"{exc}; retrain with `tradepipe train`") from None


def _execute(settings: Settings, paths: list[Path], *, symbol, strategy, registry, report, audit, summary_json,
             fresh, append, notes, title, start=None, end=None) -> None:
    """Run the pipeline into the bus, write the report, print the summary (run and backtest)."""
    from tradepipe.events.types import MARKET_DATA
    from tradepipe.models.registry import ModelLoadError
    from tradepipe.pipeline import RunRequest, run_pipeline
    from tradepipe.read.audit_log import AuditLogError
    from tradepipe.trading.report import report_from_bus

    report_dir = Path(report or settings.analytics.report_dir)
    audit_path = Path(audit or settings.audit.path)
    if fresh:
        _delete_bus_file(settings.bus.url)
        _delete_audit_log(audit_path)
    bus_obj = open_or_exit(settings, create=True)
    try:
        held = sum(bus_obj.end_offsets(MARKET_DATA).values()) if MARKET_DATA in bus_obj.topics() else 0
        if held and not append:
            raise fail(
                f"{settings.bus.url} already holds {held:,} market-data events from an earlier run; "
                "pass --fresh to start a new file" + ("" if title.startswith("tradepipe backtest") else " or --append to add to it")
            )
        if audit_path.exists() and not append:
            raise fail(f"the audit log {audit_path} is from an earlier run; pass --fresh to start a new one")
        total = sum(_count_rows(p) for p in paths)
        notifications = _log_notifications(report_dir)
        with _progress() as progress:
            stages = {"models": "ticks -> features -> models -> orders", "ema-cross": "ticks -> 1m bars -> EMA cross -> orders",
                      "features": "ticks -> bars -> features"}[strategy]
            task = progress.add_task(stages, total=total)
            summary = run_pipeline(
                RunRequest(paths=paths, symbol=symbol, settings=settings, strategy=strategy, start=start, end=end,
                           audit_path=None if strategy == "features" else audit_path),
                bus_obj,
                on_progress=lambda n: progress.advance(task, n),
                registry=registry,
            )
            if summary["strategy"] != "features":
                report_task = progress.add_task("report", total=None)  # it reads only the topics it needs
                summary["report"] = str(report_from_bus(bus_obj, report_dir, title=title, notes=notes, settings=settings,
                                                        on_progress=lambda n: progress.advance(report_task, n)))
                summary["audit_log"] = str(audit_path)
                summary["notifications"] = str(notifications)
    except ModelLoadError as exc:
        raise fail(f"{exc}; retrain with `tradepipe train`, or run with --no-models") from None
    except (OSError, ValueError, BusError, AuditLogError) as exc:  # unreadable data, bus trouble: no traceback
        raise fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        bus_obj.close()
    _print_summary(summary, title)
    for note in notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")


def _log_notifications(report_dir: Path) -> Path:
    """The notifier's messages (every fill, rejection, halt, alert) go to a file beside the
    report, not the terminal: a run has thousands."""
    import logging

    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "notifications.log"
    logger = logging.getLogger("tradepipe.notifier")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return path


def _delete_audit_log(path: Path) -> None:
    """--fresh: remove an audit log, but only one that really is a tradepipe audit log."""
    from tradepipe.read.audit_log import AuditLog, AuditLogError

    if not path.exists():
        return
    try:
        AuditLog(path, create=False).close()
    except AuditLogError as exc:
        raise fail(f"--fresh refused: {exc}") from None
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _train_small_models(paths: list[Path], symbol: str | None, settings: Settings) -> bool:
    """First use: train small models on the run's own data so the model stage has something to
    load. They are a demonstration, not an evaluation: the run then predicts the very bars they
    were fitted on. `tradepipe train` builds real ones, with out-of-sample reports. Returns
    False (after saying why) when the data is too little to train on: the run then goes on
    without the model stage."""
    from tradepipe.models.dataset import DatasetError
    from tradepipe.models.training import SMALL_PARAMS, TrainError, TrainRequest
    from tradepipe.models.training import train as run_training

    ms = settings.models
    err.print(f"model registry {ms.registry} is empty: training small {', '.join(ms.kinds)} models on this data "
              "first (in-sample for this run; use `tradepipe train` for evaluated models)", highlight=False)
    request = TrainRequest(
        paths=tuple(paths), symbol=symbol, timeframe=ms.timeframe, horizon=ms.horizon,
        dead_band=ms.dead_band_bps / 1e4, kinds=tuple(ms.kinds), registry=Path(ms.registry), report=None,
        seed=ms.seed, n_folds=2, params=SMALL_PARAMS,
    )
    try:
        with _progress() as progress:
            result = run_training(request, _training_progress(progress))
    except (DatasetError, TrainError) as exc:
        err.print(f"[yellow]warning:[/] cannot train models on this data ({exc}); running without the model "
                  "stage. Train them with `tradepipe train` on more data.", highlight=False)
        return False
    err.print(f"trained {', '.join(m.card.name for m in result.models.values())} in {result.wall_s:.1f} s "
              f"into {ms.registry}", highlight=False)
    return True


def _training_progress(progress: Progress):
    """A ``train`` progress callback drawing one bar per stage (features, each model, report)."""
    tasks: dict[str, int] = {}
    labels = {"features": "features (files)", "report": "report"}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(labels.get(stage, f"{stage} (folds + final)"), total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return on_progress


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=False,
    )


def _count_rows(path: Path) -> int:
    """Data rows in a file, for the progress bar's total: Parquet metadata, or CSV lines."""
    from tradepipe.sources.parquet import is_parquet

    if is_parquet(path):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return max(sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1, 0)


def _delete_bus_file(url: str) -> None:
    """--fresh: remove a SQLite bus file, but only one that really is a tradepipe bus."""
    from tradepipe.bus.sqlite import parse_url

    if not url.startswith("sqlite:"):
        return
    try:
        path = Path(parse_url(url).path)
        if not path.exists():
            return
        open_bus(url, create=False).close()  # refuses a file that is not a tradepipe bus
    except BusError as exc:
        raise fail(f"--fresh refused: {exc}") from None
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _print_summary(summary: dict, title: str = "tradepipe run") -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, float):
            value = f"{value:,.3f}" if value < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(key, str(value))
    out.print(table)


# --- train -------------------------------------------------------------------------------------

@app.command()
def train(
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Tick or bar files (CSV, .gz, Parquet); repeat the option or list more files after it.")] = None,
    more: Annotated[Optional[list[Path]], typer.Argument(help="More data files.", show_default=False)] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Symbol of the data (default: from each file name).")] = None,
    timeframe: Annotated[Optional[str], typer.Option("--timeframe", help="Bar timeframe to train on (default: models.timeframe, 1m).")] = None,
    horizon: Annotated[Optional[int], typer.Option("--horizon", help="Bars ahead the label looks (default: models.horizon, 5).")] = None,
    dead_band_bps: Annotated[Optional[float], typer.Option("--dead-band-bps", help="|return| at or below this many basis points is HOLD (default: models.dead_band_bps, 0.35).")] = None,
    models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated kinds: xgboost,lightgbm,lstm (default: models.kinds).")] = None,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Model registry directory (default: models.registry).")] = None,
    report: Annotated[Path, typer.Option("--report", help="Directory for <run-id>/report.json and report.html.")] = Path("reports"),
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (default: models.seed).")] = None,
    folds: Annotated[int, typer.Option("--folds", min=1, help="Walk-forward folds.")] = 4,
    config: ConfigOption = None,
) -> None:
    """Train XGBoost, LightGBM and LSTM direction models on recorded data: walk-forward
    evaluation against baselines, a JSON and HTML report, and each model saved in the
    registry (R6.1)."""
    from tradepipe.models.dataset import DatasetError
    from tradepipe.models.evaluation import EvaluationError
    from tradepipe.models.registry import ModelLoadError
    from tradepipe.models.training import TrainError, TrainRequest, check_kinds
    from tradepipe.models.training import train as run_training

    paths = list(data or []) + list(more or [])
    if not paths:
        raise fail("give the data to train on: --data FILE [FILE ...]")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise fail(f"no such data file: {', '.join(missing)}")
    kinds = None
    if models is not None:
        try:
            kinds = check_kinds(models.split(","))
        except TrainError as exc:
            raise fail(f"--models: {exc}") from None
    settings = settings_or_exit(config, models={
        "timeframe": timeframe, "horizon": horizon, "dead_band_bps": dead_band_bps,
        "registry": str(registry) if registry is not None else None, "seed": seed, "kinds": kinds,
    })
    ms = settings.models
    request = TrainRequest(
        paths=tuple(paths), symbol=symbol, timeframe=ms.timeframe, horizon=ms.horizon,
        dead_band=ms.dead_band_bps / 1e4, kinds=tuple(ms.kinds), registry=Path(ms.registry), report=report,
        seed=ms.seed, n_folds=folds,
    )
    try:
        with _progress() as progress:
            result = run_training(request, _training_progress(progress))
    except (DatasetError, EvaluationError, TrainError, ModelLoadError, OSError) as exc:
        raise fail(str(exc)) from None
    _print_training(result)


def _print_training(result) -> None:
    from rich import box

    from tradepipe.models.report import verdict

    ds, base = result.dataset, result.baselines["overall"]
    shares = ", ".join(f"{k} {v / max(len(ds), 1):.0%}" for k, v in ds.class_counts().items())
    out.print(f"{len(ds):,} labelled {ds.timeframe} rows of {', '.join(sorted(set(ds.symbol.tolist())))}, horizon "
              f"{ds.horizon} bars, dead band {ds.dead_band * 1e4:g} bps ({shares}); {len(result.folds)} "
              f"walk-forward folds; all numbers out of sample", highlight=False)
    table = Table("model", "acc", "bal.acc", "logloss", "AUC", "Δmaj", "Δprev", "rule", "net",
                  title="out of sample, all test folds",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    folds = Table("model", *[f"fold {k + 1}" for k in range(len(result.folds))], title="accuracy per fold",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)

    def num(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    def naive(equity):
        after = equity.get("total_return_after_spread")
        return f"{equity['total_return'] * 1e4:+.1f}", "-" if after is None else f"{after * 1e4:+.1f}"

    table.columns[0].no_wrap, table.columns[0].min_width = True, 11  # "LightGBM-v12"
    verdicts = {}
    for kind, m in result.models.items():
        o = m.overall
        v = verdicts[kind] = verdict(o, {"majority": base["majority"], "previous_direction": base["previous_direction"]})
        mark = "green" if v["beats_all"] and v["significant"] else "yellow"
        table.add_row(
            m.card.name, f"[{mark}]{o['accuracy']:.3f}[/]", num(o["balanced_accuracy"]), num(o["log_loss"]),
            num(o["roc_auc"]), f"{(o['accuracy'] - base['majority']['accuracy']) * 100:+.1f}",
            f"{(o['accuracy'] - base['previous_direction']['accuracy']) * 100:+.1f}", *naive(o["equity"]),
        )
        folds.add_row(m.card.name, *[f"{f['accuracy']:.3f}" for f in m.folds])
    for name, key in (("majority", "majority"), ("prev.dir.", "previous_direction")):
        b = base[key]
        table.add_row(f"[dim]{name}[/]", f"{b['accuracy']:.3f}", num(b["balanced_accuracy"]), num(b.get("log_loss")),
                      "-", "", "", *naive(b["equity"]))
        folds.add_row(f"[dim]{name}[/]", *[f"{f[key]['accuracy']:.3f}" for f in result.baselines["folds"]])
    out.print(table)
    out.print(folds)
    out.print("Δmaj/Δprev: accuracy points above the majority-class / previous-direction baseline. rule: bps "
              "of +1 on BUY / -1 on SELL for the horizon on non-overlapping test rows, mid returns before "
              "costs; net: after paying the spread", style="dim", highlight=False)
    for note in result.warnings:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    for kind, m in result.models.items():
        v = verdicts[kind]
        if not (v["beats_all"] and v["significant"]):
            out.print(f"[yellow]{m.card.name} does not clearly beat the baselines out of sample (see the report).[/]")
        eq = m.overall["equity"]
        if eq["trades"] and abs(eq["hit_rate"] - 0.5) <= 2 * (0.25 / eq["trades"]) ** 0.5:
            out.print(f"[yellow]{m.card.name}: the naive rule's direction is right {eq['hit_rate']:.1%} of "
                      f"{eq['trades']:,} trades, within 2 standard errors of a coin flip (its edge is HOLD vs move).[/]")
    out.print(f"registry {result.request.registry}: " + ", ".join(m.card.name for m in result.models.values()),
              highlight=False)
    if result.report_html is not None:
        out.print(f"report: {result.report_html} (and report.json)", highlight=False)
    out.print(f"trained in {result.wall_s:.1f} s", highlight=False)


# --- topics ------------------------------------------------------------------------------------

def _retention_text(retention_ms: int | None) -> str:
    if retention_ms is None:
        return "forever"
    for unit, ms in (("d", 86_400_000), ("h", 3_600_000)):
        if retention_ms >= ms:
            return f"{retention_ms / ms:g} {unit}"
    return f"{retention_ms / 1000:g} s"


@topics_app.command("list")
def topics_list(bus: BusOption = None, config: ConfigOption = None) -> None:
    """Topics with their partitions, record counts and retention."""
    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=False)
    try:
        table = Table("topic", "partitions", "records", "end offsets", "retention")
        for name, info in sorted(bus_obj.topics().items()):
            ends = bus_obj.end_offsets(name)
            table.add_row(name, str(info.partitions), f"{sum(ends.values()):,}", " ".join(str(ends[p]) for p in sorted(ends)),
                          _retention_text(info.retention_ms))
        out.print(table)
    finally:
        bus_obj.close()


@topics_app.command("create")
def topics_create(
    names: Annotated[Optional[list[str]], typer.Argument(help="Topics to create (default: every pipeline topic).")] = None,
    partitions: Annotated[Optional[int], typer.Option("--partitions", min=1, help="Partitions per topic (default: bus.partitions).")] = None,
    retention_ms: Annotated[Optional[int], typer.Option(
        "--retention-ms", min=-1, help="Retention in ms, -1 = forever (default: bus.retention_ms of each topic, else forever).")] = None,
    bus: BusOption = None,
    config: ConfigOption = None,
) -> None:
    """Create topics with the configured partitions and retention; existing topics are left as they are
    (Kafka cannot shrink partitions, and Tansu cannot add any: choose the count up front)."""
    from tradepipe.events.types import ALL_TOPICS

    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=True)
    try:
        existing = bus_obj.topics()
        table = Table("topic", "partitions", "retention", "status")
        for name in names or ALL_TOPICS:
            retention = settings.bus.retention_ms.get(name) if retention_ms is None else (None if retention_ms < 0 else retention_ms)
            info = bus_obj.create_topic(name, partitions or settings.bus.partitions, retention_ms=retention)
            table.add_row(name, str(info.partitions), _retention_text(info.retention_ms), "exists" if name in existing else "created")
        out.print(table)
    except (BusError, ValueError) as exc:
        raise fail(str(exc)) from None
    finally:
        bus_obj.close()


@topics_app.command("describe")
def topics_describe(
    name: Annotated[str, typer.Argument(help="The topic.")],
    group: Annotated[Optional[list[str]], typer.Option("--group", help="Also show this consumer group's committed offsets and lag (repeatable).")] = None,
    bus: BusOption = None,
    config: ConfigOption = None,
) -> None:
    """One topic: partitions, retention, and per partition its end offset (and each group's commit and lag)."""
    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=False)
    try:
        info = bus_obj.topic(name)
        ends = bus_obj.end_offsets(name)
        commits = {g: bus_obj.committed_offsets(g, name) for g in group or ()}
    except BusError as exc:
        raise fail(str(exc)) from None
    finally:
        bus_obj.close()
    out.print(f"{name}: {info.partitions} partitions, retention {_retention_text(info.retention_ms)}, "
              f"{sum(ends.values()):,} records", highlight=False)
    table = Table("partition", "end offset", *(f"{g} {column}" for g in commits for column in ("committed", "lag")))
    for p in sorted(ends):
        cells = [str(p), f"{ends[p]:,}"]
        for committed in commits.values():
            cells += ["-", f"{ends[p]:,}"] if p not in committed else [f"{committed[p]:,}", f"{ends[p] - committed[p]:,}"]
        table.add_row(*cells)
    out.print(table)


# --- replay ------------------------------------------------------------------------------------

@app.command()
def replay(
    topic: Annotated[str, typer.Option("--topic", help="Topic to replay.")],
    bus: BusOption = None,
    config: ConfigOption = None,
    from_offset: Annotated[Optional[int], typer.Option("--from-offset", min=0, help="Start at this offset in every partition.")] = None,
    from_time: Annotated[Optional[datetime], typer.Option("--from-time", help="Start at the first event at or after this ISO time (UTC if no zone).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (one JSON event per line, the seed's camelCase form) or table.")] = "jsonl",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Stop after this many events.")] = None,
) -> None:
    """Print a topic's events, merged across partitions in time order."""
    from tradepipe.runtime.store import EventStore

    if from_offset is not None and from_time is not None:
        raise fail("give --from-offset or --from-time, not both")
    if fmt not in ("jsonl", "table"):
        raise fail(f"--format must be jsonl or table, not {fmt!r}")
    from_time = _utc(from_time)
    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=False)
    try:
        store = EventStore(bus_obj, get_codec(settings.bus.codec))
        try:
            events = store.replay(topic, from_offset=from_offset or 0, from_time=from_time)
            _print_events(events, fmt, limit)
        except BusError as exc:
            raise fail(str(exc)) from None
    finally:
        bus_obj.close()


def _print_events(events, fmt: str, limit: int | None) -> None:
    encode = msgspec.json.Encoder().encode
    write = sys.stdout.buffer.write
    table = Table("partition", "offset", "timestamp", "type", "symbol", "eventId") if fmt == "table" else None
    for count, stored in enumerate(events, 1):
        if stored.event is None:
            err.print(f"[yellow]skipped[/] {stored.record.topic}/{stored.record.partition}@{stored.record.offset}: {stored.error}")
        elif table is not None:
            e = stored.event
            table.add_row(str(stored.record.partition), str(stored.record.offset), e.timestamp.isoformat(), e.type, e.symbol or "", str(e.event_id))
        else:
            write(encode(stored.event) + b"\n")
        if limit and count >= limit:
            break
    if table is not None:
        out.print(table)
    sys.stdout.flush()


# --- audit, report, trading ---------------------------------------------------------------------

audit_app = typer.Typer(help="The audit trail: why an order was placed, and whether the log is intact.", no_args_is_help=True)
trading_app = typer.Typer(help="Commands to the trading engine over the bus.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(trading_app, name="trading")


def _open_audit_log(audit: Path | None, config: Path | None):
    from tradepipe.read.audit_log import AuditLog, AuditLogError

    path = Path(audit or settings_or_exit(config).audit.path)
    try:
        return AuditLog(path, create=False)
    except AuditLogError as exc:
        raise fail(str(exc)) from None


@audit_app.command("explain")
def audit_explain(
    order_id: Annotated[str, typer.Argument(help="The order id (ord-...), as in OrderPlaced and the report.")],
    audit: AuditOption = None,
    config: ConfigOption = None,
) -> None:
    """The tick, bar, features, each model's prediction, the ensemble weights, every rule verdict
    and the fill behind an order, and its exit."""
    from tradepipe.read.audit_log import UnknownOrderError, render_explanation

    log = _open_audit_log(audit, config)
    try:
        out.print(render_explanation(log.explain(order_id)))
    except UnknownOrderError as exc:
        raise fail(str(exc)) from None
    finally:
        log.close()


@audit_app.command("verify")
def audit_verify(audit: AuditOption = None, config: ConfigOption = None) -> None:
    """Recompute the hash chain; report the first tampered record (exit 1) if any."""
    log = _open_audit_log(audit, config)
    try:
        result = log.verify()
    finally:
        log.close()
    if result.tampered is not None:
        t = result.tampered
        err.print(f"[bold red]tampered:[/] record {t.seq} (order {t.order_id}): {t.problem}: {t.detail}", highlight=False)
        raise typer.Exit(1)
    out.print(f"audit log intact: {result.records:,} records, {result.chain_events:,} chain events; head {result.head}")


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for report.html, equity.png and summary.json.")],
    bus: BusOption = None,
    config: ConfigOption = None,
    title: Annotated[str, typer.Option("--title", help="The report's title.")] = "tradepipe run",
    note: Annotated[Optional[list[str]], typer.Option("--note", help="A note shown at the top (repeatable).")] = None,
) -> None:
    """The performance report of the run recorded on a bus: equity and drawdown, price with
    entries and exits, per-model hit rates, trades."""
    from tradepipe.trading.report import report_from_bus

    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=False)
    try:
        with _progress() as progress:
            task = progress.add_task("report", total=None)
            path = report_from_bus(bus_obj, out_dir, title=title, notes=note or [], settings=settings,
                                   on_progress=lambda n: progress.advance(task, n))
    except BusError as exc:
        raise fail(str(exc)) from None
    finally:
        bus_obj.close()
    out.print(f"report: {path}")


def _send_trading_command(command: str, reason: str, bus: str | None, config: Path | None) -> None:
    import uuid

    from tradepipe.events.types import TradingCommand
    from tradepipe.runtime.clock import WallClock
    from tradepipe.runtime.service import Context
    from tradepipe.runtime.store import publish

    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings, create=False)
    try:
        ctx = Context("cli", WallClock())
        ctx.begin(None, key=uuid.uuid4().bytes)
        event = ctx.emit(TradingCommand, command=command, reason=reason)
        producer = bus_obj.producer()
        publish(producer, get_codec(settings.bus.codec), [event])
        producer.close()
    finally:
        bus_obj.close()
    out.print(f"{command} sent to {settings.bus.url} (event {event.event_id})")


ReasonOption = Annotated[str, typer.Option("--reason", help="Why: kept in the event and the engine's answer.")]


@trading_app.command("halt")
def trading_halt(reason: ReasonOption = "operator", bus: BusOption = None, config: ConfigOption = None) -> None:
    """Halt trading: the engine refuses new orders until resumed."""
    _send_trading_command("halt", reason, bus, config)


@trading_app.command("resume")
def trading_resume(reason: ReasonOption = "operator", bus: BusOption = None, config: ConfigOption = None) -> None:
    """Resume trading after a halt or a tripped kill switch (the only way out of one)."""
    _send_trading_command("resume", reason, bus, config)


# --- projections -------------------------------------------------------------------------------

projections_app = typer.Typer(help="The read side's projections (prices, orders, trades, positions, portfolio; "
                                   "analytics tables with --analytics).",
                              no_args_is_help=True)
app.add_typer(projections_app, name="projections")
StoreOption = Annotated[Optional[str], typer.Option(
    "--store", help="Read store: sqlite:///file.db or postgresql://user@host:port/db[?schema=NAME] (default: read.store).")]


def _open_read_store_or_exit(settings: Settings):
    from tradepipe.read.projections import open_read_store
    from tradepipe.read.sql import StoreError

    try:
        return open_read_store(settings.read.store, initial_equity=settings.trading.initial_equity)
    except StoreError as exc:
        raise fail(str(exc)) from None


@projections_app.command("rebuild")
def projections_rebuild(
    bus: BusOption = None,
    store: StoreOption = None,
    analytics: Annotated[Optional[str], typer.Option(
        "--analytics", help="Also rebuild this analytics store: chdb:///dir or clickhouse://... "
                            "(not held by a running `tradepipe api`).")] = None,
    config: ConfigOption = None,
) -> None:
    """Drop the projections (and with --analytics the analytics tables) and build them again
    from every event on the bus."""
    from tradepipe.read.projections import rebuild
    from tradepipe.read.sql import StoreError, redacted

    settings = settings_or_exit(config, bus, read={"store": store})
    codec = get_codec(settings.bus.codec)
    bus_obj = open_or_exit(settings, create=False)
    try:
        read_store = _open_read_store_or_exit(settings)
        try:
            with _progress() as progress:
                task = progress.add_task("rebuild (records)", total=None)
                stats = rebuild(bus_obj, read_store, codec=codec, batch_size=settings.read.batch_size,
                                on_progress=lambda done, total: progress.update(task, completed=done, total=total))
            rows = read_store.row_counts()
        finally:
            read_store.close()
        summary = {"store": redacted(settings.read.store), "records read": stats.records,
                   "events applied": stats.applied, "skipped (other types)": stats.skipped,
                   "duplicates": stats.duplicates, "rows": rows}
        if analytics is not None:
            summary |= _rebuild_analytics(bus_obj, analytics, codec)
    except (BusError, StoreError) as exc:
        raise fail(str(exc)) from None
    finally:
        bus_obj.close()
    _print_summary(summary, title="projections rebuild")


def _rebuild_analytics(bus_obj: Bus, url: str, codec) -> dict:
    from tradepipe.read.analytics import open_analytics_store, rebuild_analytics
    from tradepipe.read.clickhouse import AnalyticsStoreError, AnalyticsURLError
    from tradepipe.read.sql import redacted

    try:
        store = open_analytics_store(url)
        try:
            with _progress() as progress:
                task = progress.add_task("analytics (records)", total=None)
                records = rebuild_analytics(bus_obj, store, codec=codec,
                                            on_progress=lambda n: progress.advance(task, n))
            rows = store.row_counts()
        finally:
            store.close()
    except (AnalyticsStoreError, AnalyticsURLError) as exc:
        raise fail(f"--analytics: {exc}") from None
    return {"analytics": redacted(url), "analytics records read": records, "analytics rows": rows}


@projections_app.command("status")
def projections_status(
    store: StoreOption = None,
    bus: Annotated[Optional[str], typer.Option("--bus", help="Also show the lag behind this bus.")] = None,
    config: ConfigOption = None,
) -> None:
    """Where the projections are per topic-partition, and their row counts."""
    from tradepipe.read.sql import StoreError

    settings = settings_or_exit(config, bus, read={"store": store})
    read_store = _open_read_store_or_exit(settings)
    try:
        offsets, rows = read_store.offsets(), read_store.row_counts()
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        read_store.close()
    ends: dict[tuple[str, int], int] = {}
    if bus is not None:
        bus_obj = open_or_exit(settings, create=False)
        try:
            ends = {(t, p): end for t in {tp.topic for tp in offsets} for p, end in bus_obj.end_offsets(t).items()}
        except BusError as exc:
            raise fail(str(exc)) from None
        finally:
            bus_obj.close()
    table = Table("topic", "partition", "next offset", *(("end offset", "lag") if bus is not None else ()),
                  title="positions", title_justify="left")
    for tp, offset in sorted(offsets.items()):
        cells = [tp.topic, str(tp.partition), f"{offset:,}"]
        if bus is not None:
            end = ends.get(tp)
            cells += ["-", "-"] if end is None else [f"{end:,}", f"{end - offset:,}"]
        table.add_row(*cells)
    out.print(table)
    counts = Table("table", "rows", title="rows", title_justify="left")
    for name, count in rows.items():
        counts.add_row(name, f"{count:,}")
    out.print(counts)


# --- the API gateway ---------------------------------------------------------------------------

api_app = typer.Typer(help="The API gateway: read endpoints, commands as events, /metrics, the dashboard.")
app.add_typer(api_app, name="api")


@api_app.callback(invoke_without_command=True)
def api(
    ctx: typer.Context,
    bus: BusOption = None,
    store: Annotated[Optional[str], typer.Option("--store", help="Read store: sqlite:///file.db or postgresql://... (default: read.store).")] = None,
    analytics: Annotated[Optional[str], typer.Option("--analytics", help="Analytics store: chdb:///dir or clickhouse://... (default: read.analytics); 'none' for no analytics.")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default: api.host).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default: api.port; 0: any free port).")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Checkpoint store of the command handler (as for `tradepipe service`).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the API gateway until SIGTERM/SIGINT: the projections and analytics kept current
    from the bus, the command handler, the aggregated /metrics, /openapi.json and the dashboard."""
    if ctx.invoked_subcommand is not None:
        return
    _serve_api(settings_or_exit(config, bus, read={"store": store, "analytics": analytics},
                                api={"host": host, "port": port}), state)


@app.command()
def dashboard(
    bus: BusOption = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default: api.host).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default: api.port; 0: any free port).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the live dashboard at /dashboard: the API process (`tradepipe api`, which has
    every option) with its read side following the bus."""
    _serve_api(settings_or_exit(config, bus, api={"host": host, "port": port}), None)


def _serve_api(settings: Settings, state: str | None) -> None:
    from tradepipe.api.server import serve

    bus_obj = open_shared_bus_or_exit(settings)
    try:
        ensure_topics_or_exit(bus_obj, settings)
        serve(settings, bus_obj, _state_store(settings, state, bus_obj),
              on_ready=lambda url: err.print(f"tradepipe api on {url} (bus {settings.bus.url}); docs: {url}/docs; "
                                             f"dashboard: {url}/dashboard", highlight=False))
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        bus_obj.close()


@api_app.command("hash-key")
def api_hash_key() -> None:
    """Print an API key's configured form for api.keys ("sha256:<hex>").

    The key is read from stdin (or a hidden prompt), never from the command line (shell history)."""
    from tradepipe.api.auth import hash_key

    key = sys.stdin.readline().strip() if not sys.stdin.isatty() else typer.prompt("API key", hide_input=True)
    if not key:
        raise fail("no key given on stdin")
    out.print(hash_key(key), highlight=False)


# --- schemas -----------------------------------------------------------------------------------

@schemas_app.command("list")
def schemas_list() -> None:
    """Event types, their topics and schema versions."""
    from tradepipe.events import schemas

    table = Table("type", "topic", "current", "registered")
    for row in schemas.list_schemas():
        table.add_row(row.type, row.topic, row.current_version, ", ".join(row.registered_versions))
    out.print(table)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(
        help="Directory to write <Type>/<version>.json (with --tansu: <topic>.json) into.")],
    tansu: Annotated[bool, typer.Option(
        "--tansu",
        help="Write one <topic>.json per topic instead, the layout of Tansu's --schema-registry file://DIR, "
             "so the broker rejects a record that is not an event of that topic (error INVALID_RECORD). "
             "Only the JSON codec can be validated by the broker: msgpack payloads are not JSON, so do "
             "not use these files with bus.codec=msgpack. Tansu resolves a file:// path against its "
             "working directory (start it with file://./DIR).")] = False,
) -> None:
    """Write every registered and current schema as JSON Schema files."""
    from tradepipe.events import schemas

    written = schemas.export_tansu(directory) if tansu else schemas.export(directory)
    out.print(f"wrote {len(written)} schema files to {directory}")


@schemas_app.command("check")
def schemas_check() -> None:
    """Check the code's event types against the registry (BACKWARD compatibility)."""
    from tradepipe.events import schemas

    problems = schemas.check()
    for problem in problems:
        err.print(f"[red]✗[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    out.print("all event schemas match the registry")
