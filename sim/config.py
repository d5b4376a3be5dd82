"""Configs as data: frozen dataclasses, dotted keys, TOML in and out.

Every part of the lab keeps its settings in a frozen dataclass that checks its
own invariants in ``__post_init__``. An experiment's config nests those parts,
so each setting has one dotted key (``selection.alpha``, ``train.l2``) that is
also its column name in the results. Configs are read from TOML or from
``key=value`` strings, never from pickle or code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from typing import Any, Iterable

__all__ = [
    "ConfigError",
    "check",
    "check_range",
    "check_unique",
    "flatten",
    "override",
    "from_dict",
    "dotted_leaves",
    "to_toml",
]


class ConfigError(ValueError):
    """Bad input: names the field, the accepted range and the value received."""


def check(ok: bool, key: str, accepted: str, value: Any) -> None:
    """Raise ``ConfigError`` unless ``ok``: "`key` must be accepted, got value"."""
    if not ok:
        raise ConfigError(f"{key} must be {accepted}, got {value!r}")


def check_range(
    value: float,
    key: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Check ``low <= value <= high`` (strict where ``*_open``), refusing NaN."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    accepted = "a number " + " and ".join(parts) if parts else "a finite number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    check(ok, key, accepted, value)


def check_unique(values: tuple, key: str) -> None:
    """Refuse a list with a repeated entry (it would count one run twice)."""
    seen = set()
    for value in values:
        check(value not in seen, key, "a list without repeated entries",
              list(values))
        seen.add(value)


def _is_config(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Map every leaf of a nested config to its dotted key, in field order."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        key = f"{prefix}{field.name}"
        if _is_config(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _closest(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return match[0] if match else ""


def _coerce(key: str, text: Any, current: Any, parse: bool = True) -> Any:
    """Turn ``text`` (a string from the command line when ``parse``, or a TOML
    value) into the type of ``current``, refusing what does not fit."""
    if parse and isinstance(text, str) and not isinstance(current, str):
        try:
            text = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    if isinstance(current, bool):
        check(isinstance(text, bool), key, "true or false", text)
        return text
    if isinstance(current, int):
        ok = isinstance(text, int) and not isinstance(text, bool)
        check(ok, key, "an integer", text)
        return text
    if isinstance(current, float):
        ok = isinstance(text, (int, float)) and not isinstance(text, bool)
        check(ok, key, "a number", text)
        return float(text)
    if isinstance(current, str):
        check(isinstance(text, str), key, "a string", text)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            try:  # a quoted TOML string, as a shell user may type it
                text = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                pass
        return text
    if isinstance(current, tuple):
        if isinstance(text, str):
            text = [t for t in text.split(",") if t.strip()]
        check(isinstance(text, (list, tuple)), key, "a list", text)
        kind = type(current[0]) if current else float
        return tuple(_coerce(key, t, kind(), parse) for t in text)
    if current is None:
        return text
    raise ConfigError(f"{key}: cannot set a value of type {type(current).__name__}")


def override(cfg: Any, values: dict[str, Any], _prefix: str = "",
             parse: bool = True) -> Any:
    """Return a copy of ``cfg`` with dotted ``values`` set (strings are parsed
    as TOML values, so ``0.5``, ``true``, ``"a"`` and ``[1, 2]`` all work).

    An unknown key is refused with the closest valid name; the rebuilt
    dataclasses validate themselves, so a value out of range is refused too.
    """
    valid = flatten(cfg)
    for key in values:
        if key not in valid:
            raise ConfigError(
                f"unknown config key {_prefix + key!r}; did you mean "
                f"{_prefix + _closest(key, valid)!r}?"
            )
    grouped: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for key, text in values.items():
        head, _, rest = key.partition(".")
        if rest:
            grouped.setdefault(head, {})[rest] = text
        else:
            changes[head] = _coerce(_prefix + key, text, valid[key], parse)
    for head, sub in grouped.items():
        changes[head] = override(getattr(cfg, head), sub, f"{_prefix}{head}.", parse)
    return dataclasses.replace(cfg, **changes)


def dotted_leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(dotted_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def from_dict(cfg: Any, data: dict[str, Any]) -> Any:
    """Apply a nested mapping (as read from TOML) on top of ``cfg``; values
    keep their TOML types (a quoted "150" is a string, not a number)."""
    return override(cfg, dotted_leaves(data), parse=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_toml(cfg: Any) -> str:
    """Write a nested config as TOML: top-level scalars, then one table per part."""
    lines: list[str] = []
    tables: list[str] = []

    def walk(obj: Any, name: str) -> None:
        scalars = []
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if _is_config(value):
                walk(value, f"{name}.{field.name}" if name else field.name)
            elif value is not None:
                scalars.append(f"{field.name} = {_toml_value(value)}")
        if name:
            tables.append("\n".join([f"[{name}]", *scalars]))
        else:
            lines.extend(scalars)

    walk(cfg, "")
    return "\n\n".join(["\n".join(lines)] * bool(lines) + tables) + "\n"
