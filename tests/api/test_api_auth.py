"""API keys and the rate limit: 401 without a key, 403 with a wrong one, reads open to all;
keys configured only as hashes; 429 with Retry-After past the limit, per client."""

from __future__ import annotations

import pytest
from gateway_kit import AUTH, KEY, api_settings, gateway
from typer.testing import CliRunner

from tradepipe.api.auth import API_KEY_HEADER, KeyRing, hash_key
from tradepipe.api.commands import COMMANDS, command_path
from tradepipe.api.limits import RateLimiter
from tradepipe.cli import app
from tradepipe.config import ConfigError

COMMAND_PATHS = [command_path(c) for c in COMMANDS]


@pytest.fixture
def client(tmp_path, bus, store):
    with gateway(api_settings(tmp_path, sync_timeout_s=0.2), bus, store) as client:
        yield client


@pytest.mark.parametrize("path", COMMAND_PATHS)
def test_every_command_needs_a_valid_key(client, path):
    missing = client.post(path, json={})
    assert missing.status_code == 401
    assert missing.json() == {"detail": f"missing API key: send it in the {API_KEY_HEADER} header"}
    wrong = client.post(path, json={}, headers={API_KEY_HEADER: KEY + "x"})
    assert wrong.status_code == 403 and wrong.json() == {"detail": "API key not recognised"}
    # the right key gets past authentication (to the body check or the command itself)
    assert client.post(path, json={}, headers=AUTH).status_code in (202, 422)


def test_request_status_needs_a_key_and_reads_do_not(client):
    assert client.get(command_path("requests/nope")).status_code == 401
    assert client.get(command_path("requests/nope"), headers=AUTH).status_code == 404
    for path in ("prices", "positions", "portfolio", "trades", "orders"):
        assert client.get(command_path(path)).status_code == 200, path
    assert client.get("/health").json()["status"] == "ok"


def test_keys_are_configured_only_as_sha256_hashes():
    ring = KeyRing({"ops": hash_key("k1"), "ci": hash_key("k2")})
    assert ring.identify("k1") == "ops" and ring.identify("k2") == "ci" and ring.identify("k3") is None
    assert hash_key("k1") == "sha256:6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2c446f0e58668b09c08a16dd0"
    with pytest.raises(ConfigError, match=r"api\.keys\.ops: must be \"sha256:\""):
        KeyRing({"ops": "k1"})  # a plain key pasted into the config


def test_hash_key_command_prints_the_configured_form():
    result = CliRunner().invoke(app, ["api", "hash-key"], input="k1\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == hash_key("k1")
    assert KEY not in result.output


def test_rate_limit_answers_429_with_retry_after_per_client(tmp_path, bus, store):
    with gateway(api_settings(tmp_path, rate_limit_per_minute=3), bus, store) as client:
        assert [client.get("/api/v1/prices").status_code for _ in range(3)] == [200, 200, 200]
        limited = client.get("/api/v1/prices")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "20"  # 3 a minute: a token every 20 s
        assert "rate limit of 3 requests per minute" in limited.json()["detail"]
        # a client with a valid key has its own bucket; probes and scrapers are not limited
        assert client.get("/api/v1/prices", headers=AUTH).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200


def test_buckets_refill_and_stay_bounded():
    now = [0.0]
    limiter = RateLimiter(60, clients=2, clock=lambda: now[0])
    assert all(limiter.take("a") == 0 for _ in range(60))
    assert limiter.take("a") == pytest.approx(1.0)  # one token a second
    now[0] += 1.0
    assert limiter.take("a") == 0
    limiter.take("b")
    limiter.take("c")  # two clients kept: the least recently seen ("a", empty) is dropped
    assert all(limiter.take("a") == 0 for _ in range(60))  # so it starts again with a full bucket
