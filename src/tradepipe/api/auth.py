"""API keys (R8.2): who may change state.

Keys are configured hashed (``api.keys``: key id -> ``"sha256:<hex digest of the key>"``,
printed by ``tradepipe api hash-key``), so the configuration never holds a usable key. A
request presents its key in the ``X-API-Key`` header; :class:`KeyRing` hashes it and compares
the digest with every configured one in constant time (no early exit, so timing tells nothing
about which digest came close). Keys are never logged: only key ids are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from tradepipe.config import ConfigError

API_KEY_HEADER = "X-API-Key"
HASH_PREFIX = "sha256:"
_HASHED = re.compile(r"^sha256:[0-9a-f]{64}$")

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
    description="An API key of `api.keys` (configured as its sha256; `tradepipe api hash-key` prints it). "
                "Required on every request that changes state.")


def hash_key(key: str) -> str:
    """The configured form of ``key``: ``"sha256:<hex>"``."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, by id; raises ConfigError naming ``api.keys.<id>`` for a value that
    is not ``sha256:`` and 64 lowercase hex digits (a plain key pasted by mistake, say)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        bad = [key_id for key_id, hashed in keys.items() if not _HASHED.match(hashed)]
        if bad:
            raise ConfigError("; ".join(f"api.keys.{key_id}: must be \"sha256:\" followed by 64 lowercase hex "
                                        "digits (`tradepipe api hash-key` prints it)" for key_id in bad))
        self._digests = [(key_id, bytes.fromhex(hashed[len(HASH_PREFIX):])) for key_id, hashed in keys.items()]

    def identify(self, key: str) -> str | None:
        """The id of ``key``, or None when no configured key matches."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for key_id, expected in self._digests:
            if hmac.compare_digest(digest, expected) and found is None:
                found = key_id
        return found


def require_key(request: Request, key: str | None = Security(api_key_header)) -> str:
    """FastAPI dependency of state-changing endpoints: the caller's key id; 401 without a key,
    403 with one that is not configured."""
    if not key:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": API_KEY_HEADER})
    key_id = request.app.state.keys.identify(key)
    if key_id is None:
        raise HTTPException(403, "API key not recognised")
    return key_id
