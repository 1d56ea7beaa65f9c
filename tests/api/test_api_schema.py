"""Schemathesis against /openapi.json: every operation fuzzed from the spec, with a valid API
key (so the commands run, answered by the real command handler) and over a read store
holding real trading, must never answer 5xx and must answer what the spec declares."""

from __future__ import annotations

import pytest
import schemathesis
from gateway_kit import AUTH, running
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tradepipe.api.app import create_app
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail
from tradepipe.services.api_commands import ApiCommandHandler

EXAMPLES = 25  # per operation
#: operations whose schema-valid requests may still be refused (422), by rules JSON Schema
#: cannot state: the settings' own validation of a live change (ranges, cross-field checks,
#: which keys exist), and an OHLC window whose start is not before its end
SEMANTIC_422 = {"POST /api/v1/config", "GET /api/v1/analytics/ohlc"}


@pytest.fixture(scope="module")
def api_schema(traded):
    settings, bus, store, analytics = traded
    # the fuzzer is one client sending hundreds of requests: lift the limit, not the checks
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"rate_limit_per_minute": 10**6})})
    events = EventStore(bus)
    with BusTail(bus) as tail, running(ApiCommandHandler(settings), bus):
        app = create_app(settings, events=events, tail=tail, read=store, analytics=analytics)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    events.close()


def test_no_operation_answers_5xx_or_off_spec(api_schema):
    # schemathesis' pytest plugin (from_fixture) does not load under this pytest: one
    # Hypothesis run per operation instead, with the same strategies and checks
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 21  # 13 reads, 5 commands, request status, health, metrics
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            excluded = [positive_data_acceptance] if operation.label in SEMANTIC_422 else []
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        fuzz()


def test_the_spec_declares_the_key_on_every_command(api_schema):
    spec = api_schema.raw_schema
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")
    secured = {(method.upper(), path) for path, item in spec["paths"].items() for method, op in item.items()
               if op.get("security") == [{"ApiKey": []}]}
    posts = {("POST", path) for path, item in spec["paths"].items() if "post" in item}
    assert len(posts) == 5 and posts | {("GET", "/api/v1/requests/{request_id}")} == secured
