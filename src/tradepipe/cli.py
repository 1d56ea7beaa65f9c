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
BusOption = Annotated[Optional[str], typer.Option("--bus", help="Bus URL: sqlite:///file.db (default) or memory://.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def settings_or_exit(config: Path | None, bus_url: str | None = None, **overrides: dict) -> Settings:
    """Settings with the command's flags on top (None = not given), or exit naming the bad field."""
    try:
        return load_settings(config, bus={"url": bus_url}, **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def open_or_exit(url: str, *, create: bool) -> Bus:
    try:
        return open_bus(url, create=create)
    except BusError as exc:
        raise fail(str(exc)) from None


# --- run ---------------------------------------------------------------------------------------

@app.command()
def run(
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Tick or bar files (CSV, .gz); default: the shipped sample.")] = None,
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Symbol of the data (default: from each file name).")] = None,
    bus: BusOption = None,
    config: ConfigOption = None,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary to this JSON file.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete an existing SQLite bus file first.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add to a bus that already holds market data.")] = False,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Model registry directory (default: models.registry, ./models).")] = None,
    no_models: Annotated[bool, typer.Option("--no-models", help="Stop at the features: no model services, no ensemble.")] = False,
) -> None:
    """Replay recorded ticks or bars (CSV or Parquet) through the data bridge, bars, the three
    feature services, the model services and the ensemble into the bus, and print a summary.
    With an empty model registry, small models are trained on the data first."""
    from tradepipe.models.registry import ModelLoadError, ModelRegistry
    from tradepipe.pipeline import RunRequest, run_pipeline
    from tradepipe.sources import sample_paths

    settings = settings_or_exit(config, bus, models={"registry": str(registry) if registry is not None else None})
    paths = list(data) if data else sample_paths()
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise fail(f"no such data file: {', '.join(missing)}")
    if fresh:
        _delete_bus_file(settings.bus.url)
    bus_obj = open_or_exit(settings.bus.url, create=True)
    try:
        from tradepipe.events.types import MARKET_DATA

        held = sum(bus_obj.end_offsets(MARKET_DATA).values()) if MARKET_DATA in bus_obj.topics() else 0
        if held and not append:
            raise fail(
                f"{settings.bus.url} already holds {held:,} market-data events from an earlier run; "
                "pass --fresh to start a new file or --append to add to it"
            )
        models = None if no_models else ModelRegistry(settings.models.registry)
        if models is not None and models.is_empty() and not _train_small_models(paths, symbol, settings):
            models = None
        total = sum(_count_rows(p) for p in paths)
        with _progress() as progress:
            stages = "ticks -> bars -> features" + ("" if models is None else " -> models -> signals")
            task = progress.add_task(stages, total=total)
            summary = run_pipeline(
                RunRequest(paths=paths, symbol=symbol, settings=settings),
                bus_obj,
                on_progress=lambda n: progress.advance(task, n),
                registry=models,
            )
    except ModelLoadError as exc:
        raise fail(f"{exc}; retrain with `tradepipe train`, or run with --no-models") from None
    except (OSError, ValueError, BusError) as exc:  # unreadable data, bus trouble: no traceback
        raise fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        bus_obj.close()
    _print_summary(summary)
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")


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


def _print_summary(summary: dict) -> None:
    table = Table(title="tradepipe run", show_header=False, title_justify="left")
    for key, value in summary.items():
        if isinstance(value, dict):
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

@topics_app.command("list")
def topics_list(bus: BusOption = None, config: ConfigOption = None) -> None:
    """Topics with their partitions, record counts and retention."""
    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings.bus.url, create=False)
    try:
        table = Table("topic", "partitions", "records", "end offsets", "retention")
        for name, info in sorted(bus_obj.topics().items()):
            ends = bus_obj.end_offsets(name)
            retention = "forever" if info.retention_ms is None else f"{info.retention_ms / 86_400_000:g} d"
            table.add_row(name, str(info.partitions), f"{sum(ends.values()):,}", " ".join(str(ends[p]) for p in sorted(ends)), retention)
        out.print(table)
    finally:
        bus_obj.close()


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
    if from_time is not None and from_time.tzinfo is None:
        from_time = from_time.replace(tzinfo=timezone.utc)
    settings = settings_or_exit(config, bus)
    bus_obj = open_or_exit(settings.bus.url, create=False)
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
def schemas_export(directory: Annotated[Path, typer.Argument(help="Directory to write <Type>/<version>.json into.")]) -> None:
    """Write every registered and current schema as JSON Schema files."""
    from tradepipe.events import schemas

    written = schemas.export(directory)
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
