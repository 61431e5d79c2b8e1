"""Error and warning text for config problems: one place decides how a bad key reads.

Every message names the dotted key path, the value given and what is allowed, so a user
can fix the JSON without reading our source. pydantic's own errors never escape: they are
translated here into one `ConfigError` that lists every problem found in one pass.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from pydantic import ValidationError

from zerospeed.errors import ConfigError
from zerospeed.utils import logging as _logging

# pydantic error types we raise ourselves from validators (see _base.py)
UNKNOWN_KEY = "zs_unknown_key"
BAD_VALUE = "zs_bad_value"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if str(word).lower() in lowered:
            close = [lowered[str(word).lower()]]
    return f" (did you mean '{close[0]}'?)" if close else ""


def join_path(*parts: Any) -> str:
    """Dotted key path; list indices print as [i]."""
    out = ""
    for part in parts:
        if part in (None, ""):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def show(value: Any) -> str:
    """A value as the user wrote it in JSON, shortened when huge."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def config_error(path: str, value: Any, problem: str, allowed: str | None = None) -> ConfigError:
    """ConfigError reading '<path> = <value>: <problem>; allowed: <allowed>'."""
    message = f"{path} = {show(value)}: {problem}" if path else f"{show(value)}: {problem}"
    if allowed:
        message += f"; allowed: {allowed}"
    return ConfigError(message)


def unknown_key_message(path: str, key: str, known: Iterable[str]) -> str:
    """'unknown key' text with a did-you-mean and the list of valid keys at that level."""
    known = sorted(set(known))
    where = f"'{path}'" if path else "the top level"
    return (
        f"{join_path(path, key)}: unknown key '{key}' in {where}{did_you_mean(key, known)}; "
        f"allowed keys: {', '.join(known)}"
    )


def _pydantic_line(err: dict, prefix: str) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    ctx = err.get("ctx") or {}
    if err["type"] == UNKNOWN_KEY:
        return unknown_key_message(join_path(prefix, *loc), ctx["key"], ctx["known"])
    path = join_path(prefix, *loc)
    if err["type"] == BAD_VALUE:
        # our validators put path-relative text in the message already
        return f"{join_path(path, ctx.get('sub', ''))} = {show(ctx.get('value'))}: {ctx['problem']}"
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    if err["type"] == "literal_error" and "expected" in ctx:
        message = f"not allowed; allowed: {ctx['expected']}"
    return f"{path} = {show(err.get('input'))}: {message}"


def from_validation_error(error: ValidationError, prefix: str = "") -> ConfigError:
    """Translate pydantic's ValidationError into one ConfigError listing every problem."""
    lines = []
    for err in error.errors(include_url=False):
        line = _pydantic_line(err, prefix)
        if line not in lines:
            lines.append(line)
    if len(lines) == 1:
        return ConfigError(f"invalid config: {lines[0]}")
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


def warn(message: str) -> None:
    """Warn once per distinct message (deprecated keys, unbuilt features), rank 0 only."""
    _logging.warn_once(message)


def info(message: str) -> None:
    """Informational note (an 'auto' value fell back to its default)."""
    _logging.log_dist(message)
