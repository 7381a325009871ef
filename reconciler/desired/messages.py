"""Pydantic validation errors rewritten as sentences an operator can act on.

Pydantic's own texts ("Input should be a valid integer", plus a documentation URL) speak about
Python inputs; a config repository is TOML, so messages here speak TOML: tables, arrays, keys, and
the allowed range or choices taken from the model itself.
"""

from __future__ import annotations

import types
from datetime import date, datetime, time
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from reconciler.desired.models import quoted
from reconciler.desired.tomlpos import KeyPath

Anchor = Literal["key", "value"]


def toml_kind(value: object) -> str:
    """The TOML name of a parsed value's type, with an article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date-time"
    return type(value).__name__


def _got(value: object) -> str:
    if isinstance(value, dict | list | tuple):
        return toml_kind(value)
    return f"{toml_kind(value)} ({quoted(value)})"


def _inner_type(annotation: Any, segment: str | int) -> Any:
    """The type reached by stepping into `annotation` with one path segment."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return _inner_type(arg, segment)
        return None
    if isinstance(segment, int) and origin in (tuple, list):
        return get_args(annotation)[0]
    if isinstance(segment, str) and origin is dict:
        return get_args(annotation)[1]
    if (
        isinstance(segment, str)
        and isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
    ):
        field = _field_named(annotation, segment)
        return field.annotation if field is not None else None
    return None


def _field_named(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _model_and_field(root: type[BaseModel], loc: KeyPath) -> tuple[Any, FieldInfo | None]:
    """The type that holds the last segment of `loc`, and that segment's field (if a field)."""
    holder: Any = root
    for segment in loc[:-1]:
        holder = _inner_type(holder, segment)
        if holder is None:
            return None, None
    field = None
    last = loc[-1] if loc else None
    if isinstance(last, str) and isinstance(holder, type) and issubclass(holder, BaseModel):
        field = _field_named(holder, last)
    return holder, field


def _bounds_text(field: FieldInfo | None, ctx: dict[str, Any]) -> str:
    """'within 1..65535', 'at least 1', ... from the field's constraints (or the error's ctx)."""
    limits: dict[str, Any] = dict(ctx)
    if field is not None:
        for item in field.metadata:
            for name in ("ge", "gt", "le", "lt"):
                if getattr(item, name, None) is not None:
                    limits[name] = getattr(item, name)
    low = next(((k, limits[k]) for k in ("ge", "gt") if k in limits), None)
    high = next(((k, limits[k]) for k in ("le", "lt") if k in limits), None)
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"within {low[1]}..{high[1]}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[b[0]]} {b[1]}" for b in (low, high) if b is not None)


def _allowed_keys(holder: Any) -> str:
    if isinstance(holder, type) and issubclass(holder, BaseModel):
        keys = [field.alias or name for name, field in holder.model_fields.items()]
        return "; allowed keys: " + ", ".join(keys)
    return ""


def describe(error: ErrorDetails, model: type[BaseModel]) -> tuple[KeyPath, str, Anchor]:
    """One pydantic error as (key path in the TOML document, message, where to point)."""
    loc: KeyPath = tuple(error["loc"])
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    holder, field = _model_and_field(model, loc)

    if kind == "duplicate":
        # Raised by the models' uniqueness validators: point at the second occurrence.
        loc = (*loc, ctx["index"]) + ((ctx["key"],) if ctx["key"] else ())
        return loc, error["msg"], "value"
    if "field" in ctx:
        # Raised by a model validator about one of its own keys: point at that key's value.
        return (*loc, ctx["field"]), error["msg"], "value"
    if kind == "missing":
        return loc, "missing required key", "key"
    if kind == "extra_forbidden":
        return loc, "unknown key" + _allowed_keys(holder), "key"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return loc, f"must be {_bounds_text(field, ctx)}, got {quoted(value)}", "value"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return loc, f"must be {expected}, got {_got(value)}", "value"
    if kind == "value_error":
        return loc, str(error["msg"]).removeprefix("Value error, "), "value"
    if kind in ("too_short", "too_long"):
        low = field.metadata if field is not None else []
        min_len = next((m.min_length for m in low if hasattr(m, "min_length")), None)
        max_len = next((m.max_length for m in low if hasattr(m, "max_length")), None)
        count = ctx.get("actual_length", len(value) if isinstance(value, list | tuple) else "?")
        if min_len is not None and max_len is not None:
            want = f"{min_len} to {max_len}" if min_len != max_len else f"exactly {min_len}"
        elif min_len is not None:
            want = f"at least {min_len}"
        else:
            want = f"at most {max_len}"
        return loc, f"must have {want} item(s), got {count}", "value"
    type_words = {
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "string_type": "a string",
        "tuple_type": "an array",
        "list_type": "an array",
        "dict_type": "a table",
        "model_type": "a table",
        "model_attributes_type": "a table",
        "dataclass_type": "a table",
    }
    if kind in type_words:
        return loc, f"must be {type_words[kind]}, got {_got(value)}", "value"
    # Anything else: pydantic's sentence without the "Input" wording (never its URL).
    message = str(error["msg"]).replace("Input should be", "must be")
    return loc, message, "value"
