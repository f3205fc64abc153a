"""Bearer-token auth and the loopback rule: no key, no listening beyond 127.0.0.1."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from pydantic import SecretStr

API_KEY_ENV = "ICG_API_KEY"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_api_key(key_file: Path | None = None) -> SecretStr | None:
    """The API key from ``ICG_API_KEY``, else from ``key_file`` (stripped), else ``None``.

    Raises:
        FileNotFoundError: ``key_file`` does not exist.
        ValueError: ``key_file`` is empty.
    """
    value = os.environ.get(API_KEY_ENV, "").strip()
    if value:
        return SecretStr(value)
    if key_file is None:
        return None
    value = Path(key_file).read_text(encoding="utf-8").strip()
    if not value:
        raise ValueError(f"{key_file}: empty API key file")
    return SecretStr(value)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(expected: SecretStr, token: str | None) -> bool:
    """Constant-time comparison of a presented token with the key."""
    if token is None:
        return False
    return hmac.compare_digest(expected.get_secret_value().encode(), token.encode())
