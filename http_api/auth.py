"""API keys: loaded once, compared by hash; logs and metrics see only a short key id."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import APIError


def key_id(key: str) -> str:
    """A short, stable, non-reversible name for a key (what the logs record)."""
    return hashlib.sha256(key.encode("utf-8", errors="replace")).hexdigest()[:12]


def load_api_keys(keys_file: Path | None, keys_env: str) -> frozenset[str]:
    """Keys from a file (one a line, blank lines and `#` comments ignored) plus a comma-separated list."""
    keys = [k.strip() for k in keys_env.split(",")]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read API keys file {keys_file}: {e}") from e
        keys += [line.strip() for line in lines if not line.strip().startswith("#")]
    return frozenset(k for k in keys if k)


class KeyRing:
    """The configured keys, held as hashes so a lookup does not compare secrets character by character."""

    def __init__(self, keys: frozenset[str]):
        self._hashes = {hashlib.sha256(k.encode()).digest() for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key id, or None when keys are off; raises a 401 APIError on a bad or missing key."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "invalid_request_error",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if hashlib.sha256(token.encode("utf-8", errors="replace")).digest() not in self._hashes:
            raise APIError(401, "incorrect API key provided", "invalid_request_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return key_id(token)
