"""Typed, frozen dataclasses from nested dicts: the machinery `socmap.config` validates params.yaml with.

A field's type says what its value may be (``Literal`` lists the choices, ``tuple[X, ...]`` a list of
X, a dataclass a nested mapping, ``Optional`` admits null) and its ``metadata`` (`bounds`) the ranges;
a field whose metadata has ``parse`` is read by that function. An unknown key names the nearest valid
one; every message names the dotted key, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import string
import types
import typing
from typing import Any, Literal


class Invalid(Exception):
    """A value that does not fit its field; the message names the dotted key."""


def bounds(**limits: Any) -> dict:
    """Field metadata: ge, gt, le, lt bounds; odd=True for odd integers (off: a value that switches the
    option off and need not be odd); length for sequences."""
    return limits


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from the mapping `raw`, whose keys sit under the dotted `prefix`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Invalid(f"{prefix or 'the file'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise Invalid(f"unknown key {prefix}{key}{hint}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = coerce(hints[name], raw[name], f"{prefix}{name}", f.metadata)
    return cls(**values)


def coerce(tp: Any, value: Any, key: str, meta: Any) -> Any:
    """`value` as type `tp` at dotted `key`, within the bounds of the field's metadata `meta`."""
    if "parse" in meta:
        return meta["parse"](value, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(inner, value, key, meta)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{key}.")
    if origin is Literal:
        if value not in args or isinstance(value, bool):  # True == 1: `tta: true` is not a number of views
            raise Invalid(f"{key} = {value!r}: must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"{key} = {value!r}: must be a list")
        if "length" in meta and len(value) != meta["length"]:
            raise Invalid(f"{key} = {value!r}: must be a list of {meta['length']} values")
        return tuple(coerce(args[0], v, f"{key}[{i}]", meta) for i, v in enumerate(value))
    return scalar(tp, value, key, meta)


def scalar(tp: type, value: Any, key: str, meta: Any) -> Any:
    """A bool, int, float or str, checked against the bounds in `meta`."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise Invalid(f"{key} = {value!r}: must be {names[tp]}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise Invalid(f"{key} = {value!r}: must be a finite number")
    if tp in (int, float):
        checks = {
            "ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
            "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<"),
        }
        bounds = [(op, meta[name]) for name, op in checks.items() if name in meta]
        if not all(test(value, bound) for (test, _), bound in bounds):
            valid = " and ".join(f"{sym} {bound}" for (_, sym), bound in bounds)
            raise Invalid(f"{key} = {value!r}: must be {valid}")
        if meta.get("odd") and value % 2 == 0 and value != meta.get("off"):
            raise Invalid(f"{key} = {value!r}: must be odd, so that the window has a centre pixel")
    return value


def check_pattern(pattern: str, key: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """A path pattern with `required` placeholders and no others than `allowed` (``{band}/{year}.tif``)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise Invalid(f"{key} = {pattern!r}: not a path pattern ({exc})") from None
    valid = " and ".join(f"{{{name}}}" for name in allowed)
    unknown = sorted(names - set(allowed))
    if unknown:
        raise Invalid(f"{key} = {pattern!r}: unknown placeholder {{{unknown[0]}}}; use {valid}")
    missing = [name for name in required if name not in names]
    if missing:
        raise Invalid(f"{key} = {pattern!r}: must contain {{{missing[0]}}}")


def inside(path: str, folder: str | os.PathLike) -> bool:
    """Whether `path` lies inside `folder`, both taken from the working directory (links not followed)."""
    target, top = os.path.abspath(path), os.path.abspath(folder)
    return target != top and os.path.commonpath([target, top]) == top


def parse_crs(crs: str, key: str):
    """The pyproj CRS a params value names, or `Invalid` naming the key."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(crs)
    except CRSError:
        raise Invalid(f"{key} = {crs!r}: not a CRS; use an EPSG code such as EPSG:25832, EPSG:3035 "
                      "or EPSG:4326") from None
