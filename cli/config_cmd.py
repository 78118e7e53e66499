"""``protoguard config show | validate``: what the processes will run with, secrets masked."""
from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..schemas.settings import Settings

__all__ = ["mask_url", "masked_settings", "register"]

#: what a secret prints as: the same as pydantic's SecretStr, so every secret looks alike
MASK = "**********"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("config", help="show (secrets masked) or validate the effective configuration")
    parser.add_argument("action", choices=["show", "validate"])
    parser.set_defaults(handler=run)


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info part masked (``rediss://app:s3cret@h/0`` -> ``rediss://app:****...@h/0``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-ready values, with every secret masked.

    ``SecretStr`` fields already dump as the mask; URLs may carry a password too (a Redis URL
    written the short way), so every string that parses as a URL with a password is masked.
    Secret *files* are shown as paths: the path is not the secret.
    """
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and "://" in value:
            return mask_url(value)
        return value

    return walk(settings.model_dump(mode="json"))


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Loading already validated everything (main() turns a ConfigError into exit 2).
    if args.action == "show":
        print(json.dumps(masked_settings(settings), indent=2))
    else:
        print("configuration is valid")
    return 0
