"""Turn whatever the user handed us (path, text, dict, argparse args) into a plain dict.

Accepts what DeepSpeed accepts (a path to JSON/HJSON, a dict, base64-encoded JSON) plus
JSON/HJSON text. Parse errors carry line and column; duplicate keys are refused as
DeepSpeed refuses them, because the second one silently winning hides mistakes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
from typing import Any

import hjson

from zerospeed.errors import ConfigError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"duplicate key '{key}' in config (it appears more than once in one object)")
        out[key] = value
    return out


def _plain(value: Any) -> Any:
    """hjson returns OrderedDicts; the rest of the package expects plain dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_text(text: str, origin: str = "config text") -> dict:
    """JSON first (exact positions), then HJSON (comments, unquoted keys, trailing commas)."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as json_error:
        try:
            data = hjson.loads(text, object_pairs_hook=_no_duplicates)
        except ConfigError:
            raise
        except Exception:
            raise ConfigError(f"{origin} is not valid JSON or HJSON: {json_error.msg} at line "
                              f"{json_error.lineno}, column {json_error.colno}") from None
    data = _plain(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a JSON object {{...}} at line 1, column 1; "
                          f"got {type(data).__name__}: {str(data)[:60]!r}")
    return data


def _read_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read config file {os.path.abspath(path)}: {error.strerror}") from None
    return parse_text(text, origin=f"config file {path}")


def _looks_like_text(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(("{", "[", "//", "#", "/*")) or "\n" in stripped


def _from_base64(text: str) -> dict | None:
    try:
        decoded = base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    if not decoded.lstrip().startswith("{"):
        return None
    return parse_text(decoded, origin="base64 config")


def read_source(source: Any) -> dict:
    """A fresh dict from a path, JSON/HJSON text, base64 JSON, dict, or args.deepspeed_config."""
    if isinstance(source, dict):
        return copy.deepcopy(_plain(source))
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, bytes):
        source = source.decode("utf-8")
    if isinstance(source, str):
        if os.path.isfile(source):
            return _read_file(source)
        if _looks_like_text(source):
            return parse_text(source)
        decoded = _from_base64(source) if source and not source.endswith((".json", ".hjson")) else None
        if decoded is not None:
            return decoded
        raise ConfigError(f"config file not found: {os.path.abspath(source)} (and the string is not JSON text)")
    for attribute in ("deepspeed_config", "deepscale_config"):
        if hasattr(source, attribute):
            value = getattr(source, attribute)
            if value is None:
                continue
            return read_source(value)
    if hasattr(source, "deepspeed_config"):
        raise ConfigError("args.deepspeed_config is not set: pass --deepspeed_config <path> or a config dict")
    raise ConfigError(f"cannot read a config from {type(source).__name__}: expected a path, JSON/HJSON text, "
                      "a dict, or args with .deepspeed_config")
