"""The command line, end to end on the shipped sample and real SQLite files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradepipe.bus import open_bus
from tradepipe.cli import app
from tradepipe.sources import sample_paths

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repo

cli = CliRunner()

SEED_TICK_KEYS = {"eventId", "timestamp", "source", "symbol", "data", "metadata"}


def invoke(*args: str, **kwargs):
    return cli.invoke(app, list(args), catch_exceptions=False, **kwargs)


def replayed_ticks(*args: str) -> list[dict]:
    """The MarketDataReceived events `replay` prints (BarClosed shares their topic)."""
    lines = invoke("replay", "--topic", "market-data-events", *args).stdout.splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == "MarketDataReceived"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("TRADEPIPE_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def small_ticks(workdir):
    """The first 2,000 rows of the EURUSD sample plus three bad rows."""
    import gzip

    [eurusd] = [p for p in sample_paths() if p.name.startswith("eurusd")]
    with gzip.open(eurusd, "rt") as f:
        lines = [next(f) for _ in range(2001)]
    bad = ["2014-05-05T00:00:09.000Z,1.3,1.2,0\n", "2014-05-05T00:00:09.500Z,nan,1.2,0\n", "garbage\n"]
    path = workdir / "eurusd_ticks_small.csv"
    path.write_text("".join(lines[:1000] + bad[:2] + lines[1000:] + bad[2:]))
    return path


def test_run_on_the_shipped_sample_writes_the_summary(workdir, monkeypatch):
    import tradepipe.cli

    monkeypatch.setattr(tradepipe.cli.out, "width", 200)  # a wide terminal: explain's tables unclipped
    result = invoke("run", "--summary-json", "summary.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ticks_in"] == sum(summary["symbols"].values()) > 100_000
    assert set(summary["symbols"]) == {"EURUSD", "NZDUSD"}
    assert summary["market_data_events"] == summary["ticks_in"] - summary["ticks_rejected"]
    bus = open_bus("sqlite:///tradepipe.db", create=False)
    assert summary["events_written"] == sum(sum(bus.end_offsets(t).values()) for t in bus.topics())
    bus.close()
    assert summary["features_events"] == 3 * summary["bars"] > 0  # one per feature service per bar
    assert summary["wall_s"] > 0 and summary["ticks_per_s"] > 0
    assert (workdir / "tradepipe.db").exists()
    assert "ticks_per_s" in result.output
    # the empty registry was filled with small models first, then every 1m bar got three
    # predictions and one signal
    assert "registry models is empty" in result.output
    assert summary["models"] == {"xgboost": "XGBoost-v1", "lightgbm": "LightGBM-v1", "lstm": "LSTM-v1"}
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["lightgbm", "lstm", "xgboost"]
    assert summary["predictions"] == 3 * summary["signals"] > 0
    assert summary["model_failures"] == summary["breaker_transitions"] == 0
    signals = [json.loads(line) for line in invoke("replay", "--topic", "trading-signals").stdout.splitlines()]
    assert len(signals) == summary["signals"]
    assert {c["producer"] for c in signals[-1]["contributors"]} == {"ml-xgboost", "ml-lightgbm", "ml-lstm"}

    # ... and went on to orders: validated signals, paper fills, closed positions, a report
    assert summary["signals"] == summary["validated"] + summary["rejected"]
    assert 0 < summary["orders"] and 0 < summary["fills"] <= summary["orders"] and summary["positions_closed"] > 0
    assert summary["latency_samples"] > 0 and 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"]
    assert summary["sagas"]["COMPLETED"] > 0 and sum(summary["sagas"].values()) == summary["signals"]
    assert "In-sample" in result.output
    report = workdir / "reports" / "latest"
    assert summary["report"] == "reports/latest/report.html"
    assert (report / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "In-sample" in (report / "report.html").read_text()
    report_summary = json.loads((report / "summary.json").read_text())["summary"]
    assert report_summary["realized_pnl"] == pytest.approx(summary["realized_pnl"], abs=1e-3)
    assert (report / "notifications.log").read_text().count("\n") >= summary["fills"]

    # the audit trail explains a filled order from its tick to its exit, and is intact
    fills = [json.loads(line) for line in invoke("replay", "--topic", "order-events").stdout.splitlines()]
    closed = next(e for e in fills if e["type"] == "PositionClosed")
    explained = invoke("audit", "explain", closed["positionId"])
    assert explained.exit_code == 0, explained.output
    text = " ".join(explained.output.split())
    for piece in ("ml-xgboost", "ml-lightgbm", "ml-lstm", "confidence_floor", "spread_ceiling", "model_agreement",
                  "technical-analysis", "market-microstructure", "feature-engineering", closed["positionId"]):
        assert piece in text, piece
    assert invoke("audit", "explain", "ord-nope").exit_code == 2
    verified = invoke("audit", "verify")
    assert verified.exit_code == 0 and "audit log intact" in verified.output

    again = invoke("run")
    assert again.exit_code == 2 and "already holds" in again.output and "--fresh" in again.output

    # backtest never tests models on the data they were trained on, unless told to (and says so)
    refused = invoke("backtest", "--data", str(sample_paths()[0]), "--bus", "sqlite:///bt.db", "--audit", "bt.db.audit")
    assert refused.exit_code == 2 and "trained on this data" in " ".join(refused.output.split())
    allowed = invoke("backtest", "--data", str(sample_paths()[0]), "--bus", "sqlite:///bt.db", "--audit", "bt-audit.db",
                     "--allow-in-sample", "--from", "2014-05-06T00:00:00", "--to", "2014-05-06T06:00:00",
                     "--report", "bt", "--summary-json", "bt.json")
    assert allowed.exit_code == 0, allowed.output
    backtested = json.loads((workdir / "bt.json").read_text())
    assert 0 < backtested["ticks_in"] < summary["symbols"]["EURUSD"] and set(backtested["symbols"]) == {"EURUSD"}
    assert "In-sample (--allow-in-sample)" in (workdir / "bt" / "report.html").read_text()
    # other data of the same days is refused too (by time, not only by file), a later week is not
    month = SHARED_DATA / "eurusd_ticks_2014-05.csv.gz"
    same_days = invoke("backtest", "--data", str(month), "--bus", "sqlite:///oos.db", "--audit", "oos-audit.db")
    assert same_days.exit_code == 2 and "overlaps" in " ".join(same_days.output.split())
    later = invoke("backtest", "--data", str(month), "--from", "2014-05-12T08:00", "--to", "2014-05-12T12:00",
                   "--bus", "sqlite:///oos.db", "--audit", "oos-audit.db", "--report", "oos", "--summary-json", "oos.json")
    assert later.exit_code == 0, later.output
    out_of_sample = json.loads((workdir / "oos.json").read_text())
    assert out_of_sample["ticks_in"] > 1000 and out_of_sample["signals"] > 100
    assert "In-sample" not in (workdir / "oos" / "report.html").read_text()


def test_too_little_data_to_train_first_models_runs_without_the_model_stage(workdir, small_ticks):
    result = invoke("run", "--data", str(small_ticks), "--summary-json", "s.json")
    assert result.exit_code == 0, result.output
    assert "cannot train models on this data" in result.output and "without the model stage" in result.output
    summary = json.loads((workdir / "s.json").read_text())
    assert summary["features_events"] > 0 and summary["models"] == {} and summary["predictions"] == 0


def test_tick_models_on_bar_files_are_refused_at_start(workdir, tmp_path):
    assert invoke("run", "--data", str(sample_paths()[0])).exit_code == 0  # trains tick models
    bars = workdir / "eurusd_m1_small.csv"
    bars.write_text("ts_utc,open,high,low,close,volume,spread\n"
                    "2014-05-05T00:00:00Z,1.38676,1.38686,1.38669,1.38686,43,0.00011\n")
    result = invoke("run", "--data", str(bars), "--fresh")
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "use tick microstructure inputs, which bar files (eurusd_m1_small.csv)" in message
    assert "--no-models" in message


def test_a_corrupt_registry_is_a_clear_error_at_start(workdir):
    model = workdir / "models" / "xgboost" / "v1"
    model.mkdir(parents=True)
    (model / "card.json").write_text("{not json")
    result = invoke("run", "--data", str(sample_paths()[0]))
    assert result.exit_code == 2
    assert "xgboost/v1/card.json: corrupt model card" in result.output


def test_bad_ticks_are_dead_lettered_and_counted(workdir, small_ticks):
    result = invoke("run", "--no-models", "--data", str(small_ticks), "--summary-json", "s.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "s.json").read_text())
    assert summary["ticks_in"] == 2003 and summary["ticks_rejected"] == 3
    assert summary["market_data_events"] == 2000 and summary["dead_letters"] == 3
    letters = invoke("replay", "--topic", "dead-letter")
    reasons = [json.loads(line)["reason"] for line in letters.stdout.splitlines()]
    assert len(reasons) == 3 and all("eurusd_ticks_small.csv line" in r for r in reasons)


def test_replay_prints_seed_shaped_jsonl_from_offset_and_time(workdir, small_ticks):
    assert invoke("run", "--no-models", "--data", str(small_ticks)).exit_code == 0
    everything = replayed_ticks()
    assert len(everything) == 2000
    first = everything[0]
    assert SEED_TICK_KEYS <= set(first) and first["type"] == "MarketDataReceived"
    assert set(first["data"]) == {"bid", "ask", "volume", "timestamp"}
    assert set(first["metadata"]) >= {"version", "producer"} and first["metadata"]["producer"] == "data-bridge"
    cut = everything[1500]["timestamp"]
    later = replayed_ticks("--from-time", cut)
    assert all(e["timestamp"] >= cut for e in later) and 0 < len(later) <= 500 + 5
    bars = [e for e in map(json.loads, invoke("replay", "--topic", "market-data-events").stdout.splitlines())
            if e["type"] == "BarClosed"]
    tail = invoke("replay", "--topic", "market-data-events", "--from-offset", str(2000 + len(bars) - 1))
    assert len(tail.stdout.splitlines()) == 1  # one symbol: one partition holds ticks and bars
    assert len(invoke("replay", "--topic", "market-data-events", "--limit", "7").stdout.splitlines()) == 7


def test_topics_list(workdir, small_ticks):
    invoke("run", "--no-models", "--data", str(small_ticks), "--summary-json", "s.json")
    summary = json.loads((workdir / "s.json").read_text())
    result = invoke("topics", "list")
    assert result.exit_code == 0
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "-" in line and "│" in line}
    assert f"{2000 + summary['bars']:,}" in rows["market-data-events"]
    assert f"{summary['features_events']:,}" in rows["features-calculated"]
    assert "dead-letter" in rows


def test_fresh_replaces_and_append_adds(workdir, small_ticks):
    invoke("run", "--no-models", "--data", str(small_ticks))
    invoke("run", "--no-models", "--data", str(small_ticks), "--append")
    assert len(replayed_ticks()) == 4000
    invoke("run", "--no-models", "--data", str(small_ticks), "--fresh")
    assert len(replayed_ticks()) == 2000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay", "--topic", "market-data-events", "--bus", "sqlite:///missing.db"), "does not exist"),
        (("replay", "--topic", "x", "--bus", "nosuch://x"), "bus.url"),
        (("topics", "list", "--bus", "not a url"), "bus.url"),
        (("run", "--data", "no/such/file.csv"), "no such data file"),
        (("replay", "--topic", "t", "--from-offset", "1", "--from-time", "2014-01-01"), "not both"),
    ],
)
def test_clear_errors(workdir, args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_fresh_never_deletes_a_file_that_is_not_a_bus(workdir):
    import sqlite3

    other = sqlite3.connect(workdir / "other.db")
    other.execute("CREATE TABLE precious (x)")
    other.commit()
    other.close()
    before = (workdir / "other.db").read_bytes()
    result = invoke("run", "--bus", "sqlite:///other.db", "--fresh")
    assert result.exit_code == 2 and "--fresh refused" in result.output
    assert (workdir / "other.db").read_bytes() == before


def test_unreadable_data_and_bad_sqlite_urls_are_clear_errors(workdir):
    (workdir / "eurusd_ticks.csv.gz").write_bytes(b"not gzip at all")
    result = invoke("run", "--no-models", "--data", "eurusd_ticks.csv.gz")
    assert result.exit_code == 2 and "gzip" in result.output.lower()
    result = invoke("run", "--bus", "sqlite://host/x.db", "--fresh")
    assert result.exit_code == 2 and "error" in result.output


def test_replay_of_an_unknown_topic(workdir, small_ticks):
    invoke("run", "--no-models", "--data", str(small_ticks))
    result = invoke("replay", "--topic", "no-such-topic")
    assert result.exit_code == 2 and "unknown topic 'no-such-topic'" in result.output


def test_a_corrupt_bus_file_is_reported_and_left_alone(workdir):
    (workdir / "tradepipe.db").write_bytes(b"this is not a database" * 100)
    before = (workdir / "tradepipe.db").read_bytes()
    result = invoke("topics", "list")
    assert result.exit_code == 2 and "tradepipe.db" in result.output
    assert (workdir / "tradepipe.db").read_bytes() == before


def test_bad_config_fails_at_start_naming_the_field(workdir, monkeypatch):
    (workdir / "tradepipe.toml").write_text("[runner]\ncheckpoint_every = 0\n")
    result = invoke("topics", "list")
    assert result.exit_code == 2 and "runner.checkpoint_every" in result.output
    (workdir / "tradepipe.toml").write_text("[bus]\nurll = 'x'\n")
    assert "bus.urll" in invoke("topics", "list").output
    (workdir / "tradepipe.toml").unlink()
    monkeypatch.setenv("TRADEPIPE_BUS__PARTITIONS", "zero")
    result = invoke("topics", "list")
    assert result.exit_code == 2 and "bus.partitions" in result.output
    monkeypatch.delenv("TRADEPIPE_BUS__PARTITIONS")
    (workdir / "tradepipe.toml").write_text("[models]\nkinds = ['lstm', 'lstm']\n[ensemble]\ndeadline_s = 1\n")
    message = " ".join(invoke("run").output.split())
    assert "models.kinds: Value error, each kind once" in message
    (workdir / "tradepipe.toml").write_text("[ensemble]\ndeadline_s = 1\n")
    message = " ".join(invoke("run").output.split())
    assert "ensemble.deadline_s (1) must be at least models.join_deadline_s (5)" in message


def test_config_file_and_environment_choose_the_bus(workdir, small_ticks, monkeypatch):
    (workdir / "tradepipe.toml").write_text('[bus]\nurl = "sqlite:///from-file.db"\ncodec = "msgpack"\n')
    invoke("run", "--no-models", "--data", str(small_ticks))
    assert (workdir / "from-file.db").exists()
    lines = invoke("replay", "--topic", "market-data-events", "--limit", "1").stdout.splitlines()
    assert json.loads(lines[0])["type"] == "MarketDataReceived"  # msgpack on the bus, JSON out
    monkeypatch.setenv("TRADEPIPE_BUS__URL", "sqlite:///from-env.db")
    invoke("run", "--no-models", "--data", str(small_ticks))
    assert (workdir / "from-env.db").exists()


def test_schemas_commands(workdir):
    assert invoke("schemas", "check").exit_code == 0
    listed = invoke("schemas", "list").stdout
    assert "MarketDataReceived" in listed and "DeadLetter" in listed
    assert invoke("schemas", "export", "out").exit_code == 0
    assert (workdir / "out" / "MarketDataReceived" / "1.0.json").exists()


def test_console_script_help():
    exe = shutil.which("tradepipe") or pytest.fail("the tradepipe console script is not installed")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "replay", "topics", "schemas"):
        assert command in result.stdout
    assert subprocess.run([sys.executable, "-m", "tradepipe", "--help"], capture_output=True).returncode == 0


def test_run_publishes_bars_and_the_three_feature_groups(workdir, small_ticks):
    invoke("run", "--no-models", "--data", str(small_ticks), "--summary-json", "s.json")
    summary = json.loads((workdir / "s.json").read_text())
    lines = invoke("replay", "--topic", "features-calculated").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == summary["features_events"] == 3 * summary["bars"]
    groups = {e["group"] for e in events}
    assert groups == {"feature-engineering", "technical-analysis", "market-microstructure"}
    one_minute = [e for e in events if e["timeframe"] == "1m" and e["group"] == "feature-engineering"]
    assert set(one_minute[-1]["features"]) == {
        "rsi", "macd", "macd_signal", "macd_hist", "sma_20", "ema_50", "bb_upper", "bb_middle", "bb_lower", "bb_width",
        "close"}
    assert one_minute[0]["features"]["ema_50"] is None  # warming up: null, never NaN
    assert all(e["barTime"] and e["correlationId"] and e["metadata"]["calculationTime"] for e in events)


def test_run_reads_parquet(workdir, small_ticks):
    from tradepipe.sources.files import read_ticks
    from tradepipe.sources.parquet import write_parquet_ticks

    rows = write_parquet_ticks(workdir / "eurusd_ticks.parquet", [t for t in read_ticks(small_ticks) if hasattr(t, "bid")])
    result = invoke("run", "--no-models", "--data", "eurusd_ticks.parquet", "--summary-json", "p.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "p.json").read_text())
    assert summary["ticks_in"] == rows == 2002 and summary["symbols"] == {"EURUSD": 2002}
    assert summary["ticks_rejected"] == 2 and summary["market_data_events"] == 2000  # crossed, NaN


def test_report_and_trading_commands_on_a_recorded_bus(workdir, small_ticks):
    assert invoke("run", "--no-models", "--data", str(small_ticks)).exit_code == 0
    made = invoke("report", "--out", "rep", "--title", "features only", "--note", "a note")
    assert made.exit_code == 0, made.output
    html = (workdir / "rep" / "report.html").read_text()
    assert "features only" in html and "a note" in html and "No trades" in html
    assert (workdir / "rep" / "equity.png").read_bytes()[:4] == b"\x89PNG"
    for command in ("halt", "resume"):
        sent = invoke("trading", command, "--reason", "test")
        assert sent.exit_code == 0 and f"{command} sent" in sent.output
    commands = [json.loads(line) for line in invoke("replay", "--topic", "system-events").stdout.splitlines()]
    assert [(c["type"], c["command"], c["reason"]) for c in commands] == [
        ("TradingCommand", "halt", "test"), ("TradingCommand", "resume", "test")]
    missing = invoke("report", "--out", "x", "--bus", "sqlite:///nope.db")
    assert missing.exit_code == 2
    assert invoke("audit", "verify", "--audit", "nope.db").exit_code == 2
