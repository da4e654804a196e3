"""Settings declared once, checked from their declaration: each field of a settings class is
``Annotated[type, about(help, bounds...)]`` (pydantic's ``Field``: the Prefect form reads it too),
and ``check_fields`` validates every field from that declaration alone (its type, its bounds, its
choices when the type is a ``Literal``), with one-line errors that name the field, as
scikit-learn's parameter constraints do. The command line's options are derived from the same
declaration (``declared``)."""
from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import Field
from pydantic.fields import FieldInfo

from ..errors import MuscError


class ConfigError(MuscError, ValueError):
    """A configuration value is invalid; the message names the field."""


def about(text: str, **constraints: Any) -> FieldInfo:
    """A field's declaration: its help and its bounds (``ge``, ``gt``, ``le``, ``lt``, ``min_length``)."""
    return Field(description=text, **constraints)


@dataclass(frozen=True)
class Declared:
    """What a settings field declares: its name, default, help, the kind of value (int, float, str,
    ints: a list of integers, grid: rows x columns), whether it may be empty (None), its choices and
    its bounds."""
    name: str
    default: Any
    help: str
    kind: str
    optional: bool
    choices: tuple[str, ...] | None
    bounds: tuple[Any, ...]

    def default_text(self) -> str:
        if self.default is None:
            return ""
        return ",".join(map(str, self.default)) if isinstance(self.default, tuple) else str(self.default)


def declared(settings_class: type) -> list[Declared]:
    """The fields of a settings dataclass as declared, in order."""
    hints = typing.get_type_hints(settings_class, include_extras=True)
    found = []
    for field in dataclasses.fields(settings_class):
        hint = hints[field.name]
        info = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo)), None)
        base = hint.__origin__ if typing.get_origin(hint) is typing.Annotated else hint
        members = typing.get_args(base) if typing.get_origin(base) in (typing.Union, types.UnionType) else (base,)
        optional = type(None) in members
        core = next(m for m in members if m is not type(None))
        choices = tuple(typing.get_args(core)) if typing.get_origin(core) is Literal else None
        found.append(Declared(field.name, field.default, info.description if info else "", _kind(core), optional,
                              choices, tuple(info.metadata) if info else ()))
    return found


def _kind(core: Any) -> str:
    if typing.get_origin(core) is Literal:
        return "str"
    if typing.get_origin(core) is tuple:
        return "grid" if typing.get_args(core) == (int, int) else "ints"
    return {int: "int", float: "float", str: "str", bool: "bool"}[core]


def check_fields(settings: Any) -> None:
    """Every field of a (frozen) settings dataclass checked and normalised from its declaration:
    lists of integers from "1,3,5" or a list, a grid from "RxC" or [R, C], numbers finite and in
    their bounds, texts among their choices. ConfigError naming the field."""
    for field in declared(type(settings)):
        value = getattr(settings, field.name)
        if value is None and field.optional:
            continue
        value = {"ints": as_int_tuple, "grid": as_grid, "int": check_int, "float": check_number,
                 "str": check_text, "bool": check_bool}[field.kind](field.name, value)
        if field.choices is not None and value not in field.choices:
            raise ConfigError(f"{field.name}: expected {' or '.join(map(repr, field.choices))}, got {shown(value)}")
        for bound in field.bounds:
            check_bound(field.name, value, bound)
        object.__setattr__(settings, field.name, value)


_BOUNDS = ((annotated_types.Ge, "ge", ">=", operator.ge), (annotated_types.Gt, "gt", ">", operator.gt),
           (annotated_types.Le, "le", "<=", operator.le), (annotated_types.Lt, "lt", "<", operator.lt))


def check_bound(name: str, value: Any, bound: Any) -> None:
    """A bound of ``annotated_types`` (Ge, Gt, Le, Lt, MinLen) on a number or a list."""
    for kind, attribute, words, holds in _BOUNDS:
        if isinstance(bound, kind) and not holds(value, getattr(bound, attribute)):
            limit = getattr(bound, attribute)
            said = str(value) if not isinstance(value, int) or abs(value) < 10**30 else \
                f"a number of {len(str(abs(value)))} digits"
            raise ConfigError(f"{name}: must be {words} {limit}, got {said}")
    if isinstance(bound, annotated_types.MinLen) and len(value) < bound.min_length:
        raise ConfigError(f"{name}: must hold at least {bound.min_length} value(s), got {shown(list(value))}")


def shown(value: Any, limit: int = 80) -> str:
    """A value for an error line: its repr, cut short (an error is one line, whatever was written)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_number(name: str, value: Any) -> float:
    """A real number, finite; YAML reads 1e-9 (no dot) as text: say how to write it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads this as text: write it with a dot, e.g. 1.0e-9)"
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {shown(value)}{hint}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return value


def check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
    return value


def check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected text, got {shown(value)}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
    return value


def as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Integers from a list, a tuple or "1,3,5"; 1.5, "a", true are refused (naming the field)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        items = list(value)
    except TypeError:
        raise ConfigError(f"{name}: expected a list of integers, got {shown(value)}") from None
    result = []
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("+-").isdigit():
            item = int(item)
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{name}: expected a list of integers, got {shown(value)}")
        result.append(item)
    return tuple(result)


def as_grid(name: str, value: Any) -> tuple[int, int]:
    """[R, C], (R, C) or "RxC" -> (R, C) (ConfigError naming the field)."""
    if isinstance(value, str):
        value = value.lower().replace("x", ",")
    items = as_int_tuple(name, value)
    if len(items) != 2:
        raise ConfigError(f"{name}: expected rows and columns, [R, C] or RxC, got {shown(value)}")
    return items
