"""API keys for a service, read on the client at deploy time.

Keys come from an environment variable (comma-separated) or a file (one per
line). Only their SHA-256 hashes are sent to the cluster.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rayfleet.config.service import AuthSpec
from rayfleet.errors import ConfigError

__all__ = ["load_api_keys", "hash_key"]


def hash_key(key: str) -> str:
    """API keys travel to replicas only as SHA-256 hashes."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_api_keys(auth: AuthSpec, base_dir: Path | None = None) -> list[str]:
    """The service's API keys; [] when auth is off. ConfigError when a source is empty or missing."""
    keys: list[str] = []
    if auth.api_keys_env:
        raw = os.environ.get(auth.api_keys_env, "")
        found = [k.strip() for k in raw.split(",") if k.strip()]
        if not found:
            raise ConfigError(f"auth.api_keys_env: environment variable {auth.api_keys_env} is unset or empty.",
                              hint=f"export {auth.api_keys_env}=KEY1,KEY2 before 'rayfleet serve'.")
        keys += found
    if auth.api_keys_file:
        path = Path(auth.api_keys_file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"auth.api_keys_file: can't read {path}: {e.strerror}.",
                              hint="Create it with one API key per line.") from e
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise ConfigError(f"auth.api_keys_file: {path} holds no API key.",
                              hint="Put one API key per line in it.")
        keys += found
    for k in keys:
        if len(k) < 16:
            raise ConfigError("An API key is shorter than 16 characters.",
                              hint="Use long random keys, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return keys
