"""The commands of the API gateway (R8.2): what each POST carries, in one table.

:data:`COMMANDS` maps a command's path under :data:`API_PREFIX` to the pydantic model of its
body. The gateway declares and validates request bodies with these models (422 for a
malformed one, before anything is published); the command handler service
(:mod:`tradepipe.services.api_commands`) validates each APIRequestReceived body again with
the same model, since anything on the bus can publish a request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/v1"
#: what a symbol may look like (EURUSD, XAUUSD.m, BTC-USD)
SYMBOL_PATTERN = r"^[A-Za-z0-9._-]{1,32}$"


class CommandBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigurationChange(CommandBody):
    """Live settings: published as a ConfigurationUpdated that the services apply."""

    changes: dict[str, Any] = Field(
        min_length=1, description='"section.field" -> new value, e.g. {"validator.min_confidence": 0.4}; '
                                  "sections that take live changes: validator, trading")


class ManualOrder(CommandBody):
    """An operator's market order: the trading engine runs the same risk checks as for a signal
    and places it with reason "manual" (or rejects it, saying why)."""

    symbol: str = Field(pattern=SYMBOL_PATTERN, examples=["EURUSD"])
    side: Literal["BUY", "SELL"]
    volume: float | None = Field(None, gt=0, description="units; default: the sizing rule's (trading.sizing)")
    reason: str = Field("", max_length=200)


class TradingStateCommand(CommandBody):
    """Halt or resume trading; resume is also the only way out of a tripped kill switch."""

    reason: str = Field("", max_length=200)


class ReplayCommand(CommandBody):
    """Rebuild read-side projections from the bus: the `tradepipe api` process serving them
    empties them and replays every event (reads meanwhile see them filling up again)."""

    target: Literal["all", "projections", "analytics"] = "all"
    reason: str = Field("", max_length=200)


#: command path (under API_PREFIX) -> its body
COMMANDS: dict[str, type[CommandBody]] = {
    "config": ConfigurationChange,
    "orders": ManualOrder,
    "trading/halt": TradingStateCommand,
    "trading/resume": TradingStateCommand,
    "replay": ReplayCommand,
}


def command_path(command: str) -> str:
    return f"{API_PREFIX}/{command}"


def command_of(method: str, path: str) -> str | None:
    """The command a request names (``POST /api/v1/trading/halt`` -> ``trading/halt``), or None."""
    prefix = API_PREFIX + "/"
    if method.upper() != "POST" or not path.startswith(prefix):
        return None
    command = path[len(prefix):].split("?", 1)[0]
    return command if command in COMMANDS else None
