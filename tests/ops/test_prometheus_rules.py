"""The shipped Prometheus rules (R8.4): promtool accepts them, they are the eight rules of the
alerts service with its default thresholds, and every metric they read is one tradepipe
exports."""

from __future__ import annotations

import re
import os
import shutil
import subprocess
from importlib.resources import files

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tradepipe.bus import open_bus
from tradepipe.config import AlertSettings
from tradepipe.events.types import MARKET_DATA
from tradepipe.ops.alerts import RULES
from tradepipe.ops.metrics import ConsumerLag, EventMetrics, ServiceCollector
from tradepipe.runtime.runner import ServiceRunner, ensure_topics
from tradepipe.services.notifier import Notifier

RULES_FILE = files("tradepipe.ops") / "prometheus-rules.yml"
METRIC = re.compile(r"\btradepipe_[a-z0-9_]+")


def shipped_rules() -> list[dict]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_the_rules_are_the_alert_services_with_its_default_thresholds():
    rules = shipped_rules()
    assert sorted(rule["labels"]["rule"] for rule in rules) == sorted(RULES)
    defaults = AlertSettings()
    for rule in rules:
        spec = RULES[rule["labels"]["rule"]]
        assert rule["labels"]["severity"] == spec.severity
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        comparison, number = re.search(r"(>|<|==)\s*([0-9.]+)\s*$", rule["expr"]).groups()
        if spec.setting is None:  # the breaker: OPEN is state 2
            assert (comparison, float(number)) == ("==", 2.0)
            continue
        threshold = getattr(defaults, spec.setting)
        if spec.setting == "processing_ms":
            threshold /= 1000  # the histogram is in seconds
        assert (comparison, float(number)) == (">" if spec.above else "<", threshold), rule["alert"]


def exported_names(tmp_path) -> set[str]:
    """The metric names a service process and the API's watcher export, with their samples'."""
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    ensure_topics(bus, partitions=1)
    runner = ServiceRunner(Notifier(), bus)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(runner, "notifier"))
    registry.register(EventMetrics())
    registry.register(ConsumerLag(bus, {"notifier": (MARKET_DATA,)}))
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            names.add(family.name + "_total")
    runner.close()
    bus.close()
    return names


def test_every_metric_a_rule_reads_is_exported(tmp_path):
    names = exported_names(tmp_path)
    read = {name for rule in shipped_rules() for name in METRIC.findall(rule["expr"])}
    assert read == {"tradepipe_event_processing_seconds_bucket", "tradepipe_consumer_lag",
                    "tradepipe_circuit_breaker_state", "tradepipe_validation_failure_ratio", "tradepipe_model_accuracy",
                    "tradepipe_signal_accuracy", "tradepipe_drawdown", "tradepipe_execution_failure_ratio"}
    assert read <= names, read - names
