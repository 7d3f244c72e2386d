"""API keys for `fedtune serve --api-key-file`: one key per line (blank lines and `#`
comments skipped); a request carries one as `Authorization: Bearer KEY` or `X-API-Key: KEY`
and is checked in constant time against every key."""

from __future__ import annotations

import hmac
from pathlib import Path

from fedtune.errors import FedtuneError

MIN_KEY_CHARS = 16


class ApiKeyError(FedtuneError):
    """The API key file cannot be used (one line, exit 2)."""


def load_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in `path`; ApiKeyError naming the problem."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ApiKeyError(f"--api-key-file {path}: cannot read: {reason or exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ApiKeyError(f"--api-key-file {path}: no keys (one per line)")
    short = [i for i, key in enumerate(keys, 1) if len(key) < MIN_KEY_CHARS]
    if short:
        raise ApiKeyError(
            f"--api-key-file {path}: key {short[0]} is shorter than {MIN_KEY_CHARS} characters"
        )
    return tuple(key.encode() for key in keys)


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a request presents (ASGI headers, lower-case names)."""
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key")


def is_valid(presented: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Whether `presented` is one of `keys`; every key is compared, in constant time."""
    if presented is None:
        return False
    matches = [hmac.compare_digest(presented, key) for key in keys]
    return any(matches)
