"""API keys for `fedtune serve --api-key-file`: one key per line (blank lines and `#`
comments skipped), each at least MIN_KEY_CHARS characters of KEY_ALPHABET (hex, base64 or
URL-safe base64, e.g. `openssl rand -hex 32`); the file is a secret file
(`fedtune.secrets`: a regular file of at most 64 KiB, owner-only access recommended). A
request carries a key as `Authorization: Bearer KEY` or `X-API-Key: KEY` and is checked in
constant time against every key."""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from fedtune.secrets import SecretFileError, read_secret_file

MIN_KEY_CHARS = 16
KEY_ALPHABET = "A-Z a-z 0-9 + / = _ -"
"""The characters a key may hold: so a line of /etc/passwd or of a PEM header is no key."""
_KEY = re.compile(r"[A-Za-z0-9+/=_-]+")


class ApiKeyError(SecretFileError):
    """The API key file cannot be used (one line, exit 2)."""


def load_keys(path: Path, warn_access: bool = True) -> tuple[bytes, ...]:
    """The keys in `path`; ApiKeyError naming the problem (never quoting a key)."""
    with read_secret_file(path, "--api-key-file", warn_access=warn_access) as data:
        return _parse_keys(path, data)


def _parse_keys(path: Path, data: bytes) -> tuple[bytes, ...]:
    """The keys in the contents of key file `path`."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ApiKeyError(f"--api-key-file {path}: not UTF-8 text") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ApiKeyError(f"--api-key-file {path}: no keys (one per line)")
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_CHARS:
            problem = f"is shorter than {MIN_KEY_CHARS} characters"
        elif not _KEY.fullmatch(key):
            problem = f"has a character other than {KEY_ALPHABET}"
        else:
            continue
        raise ApiKeyError(
            f"--api-key-file {path}: key {number} {problem} (make keys with `openssl rand -hex 32`)"
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
