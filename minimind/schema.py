"""Build validated dataclasses from plain dicts (YAML), refusing unknown keys.

One generic builder serves `minimind.yaml`, `runs/V/config.yaml` and `--set` values, so
every setting is checked the same way: type, range (`metadata["min"]`/`["max"]`),
choices, and an error that names the key by its dotted path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints


class SchemaError(ValueError):
    """A value or key does not fit the schema; the message names the dotted key."""


def field(default: Any = dataclasses.MISSING, *, help: str, min: Any = None, max: Any = None,
          choices: list | None = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with the metadata the validator, the CLI and the agent schema read."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return coerce(value, option, where)
            except SchemaError as exc:
                errors.append(str(exc))
        names = ", ".join(_type_name(a) for a in get_args(tp))
        raise SchemaError(f"{where}: expected {names}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise SchemaError(f"{where}: must be one of {', '.join(map(str, get_args(tp)))}; got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise SchemaError(f"{where}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise SchemaError(f"{where}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, got {value!r}")
        return value
    raise SchemaError(f"{where}: unsupported type {tp!r}")


def check_range(value: Any, meta: typing.Mapping, where: str) -> None:
    """Apply `min`/`max`/`choices` from a field's metadata."""
    if value is None:
        return
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and value not in choices:
        raise SchemaError(f"{where}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    if lo is not None and value < lo:
        raise SchemaError(f"{where}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise SchemaError(f"{where}: must be <= {hi}, got {value!r}")


def build(cls: type, data: Any, where: str = "") -> Any:
    """Construct dataclass `cls` from a mapping, refusing unknown keys by dotted name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SchemaError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise SchemaError(f"unknown key {', '.join(prefix + str(k) for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        value = coerce(value, hints[name], key)
        check_range(value, known[name].metadata, key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SchemaError):
            raise
        raise SchemaError(f"{where or cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain nested dicts (for YAML) from dataclasses."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def describe(cls: type) -> dict[str, dict]:
    """{field: {type, help, min, max, choices, default}} for the CLI and the agent's tool schema."""
    hints = get_type_hints(cls)
    out: dict[str, dict] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = {
            "type": _type_name(hints[f.name]),
            "help": f.metadata.get("help", ""),
            "min": f.metadata.get("min"),
            "max": f.metadata.get("max"),
            "choices": f.metadata.get("choices"),
            "default": default,
        }
    return out
