"""Base of the typed config: strict pydantic sections, and pydantic errors as one ``ConfigError`` line.

A ``Section`` rejects unknown keys, wrong types (``1`` is not ``true``, ``2.5`` not an integer,
``"high"`` not a number; an integer is a valid float) and NaN/infinity. ``parse_section`` turns the
first problem pydantic reports into a one-line message that names the full dotted key, e.g.
``admp.prune_ratio: 1.0 is out of range [0, 1)``; ranges and choice lists in the message are read
from the field's own annotation, so they cannot drift from the check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

SectionT = TypeVar("SectionT", bound=BaseModel)

TYPE_WORDS = {
    "float_type": "a number",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true/false",
    "string_type": "a string",
    "list_type": "a list",
}
MAPPING_TYPES = ("model_type", "model_attributes_type", "dict_type")
RANGE_TYPES = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


class SectionError(ValueError):
    """A cross-field problem found by a section's validator, reported on ``key`` of that section.

    ``text`` may name other keys of the section as ``{p}name``; ``{p}`` becomes the section's
    dotted prefix (``data.``), so the message names full keys wherever the section sits.
    An empty ``key`` reports the problem on the section itself.
    """

    def __init__(self, key: str, text: str) -> None:
        super().__init__(f"{key}: {text}")
        self.key, self.text = key, text


class Section(BaseModel):
    """A config section: strict types, no unknown key, finite numbers; an empty section is ``{}``."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        """``admp:`` with nothing under it (YAML null) means all defaults."""
        return {} if data is None else data


def parse_section(cls: type[SectionT], data: Any, prefix: str = "") -> SectionT:
    """Validate ``data`` (a mapping) into ``cls``; a problem raises ConfigError naming ``prefix`` + key."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, prefix)) from exc


def describe(exc: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """The first problem of ``exc`` (unknown keys first) as one line naming the dotted key."""
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    return _message(errors[0], cls, prefix)


def dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``("tasks", 0, "name")`` under prefix ``""`` -> ``tasks[0].name``; ``""`` for the root."""
    text = prefix.rstrip(".")
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """(base type, constraint metadata) of a possibly ``Annotated`` type."""
    if get_origin(tp) is not Annotated:
        return tp, []
    base, *extra = get_args(tp)
    return base, [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]


def _annotation_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[Any, list[Any]]:
    """(type, constraint metadata) of the value at ``loc`` below model ``cls``; (None, []) if unknown."""
    tp: Any = cls
    meta: list[Any] = []
    for part in loc:
        if isinstance(part, str):
            fields = tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else {}
            if part not in fields:
                return None, []
            tp, meta = fields[part].annotation, list(fields[part].metadata)
        else:  # a list index
            args = get_args(tp)
            if not args:
                return None, []
            tp, meta = _unwrap(args[0])
    return tp, meta


def interval(meta: list[Any]) -> str:
    """The interval a field's ``Field(ge/gt/le/lt)`` constraints allow, e.g. ``[0, 1)`` or ``(0, inf]``."""
    lo: object = "-inf"  # a bound: any value pydantic's constraint holds, printed as is
    hi: object = "inf"
    lo_open, hi_open = False, False
    for m in meta:
        if isinstance(m, (Ge, Gt)):
            lo, lo_open = (m.gt, True) if isinstance(m, Gt) else (m.ge, False)
        elif isinstance(m, (Le, Lt)):
            hi, hi_open = (m.lt, True) if isinstance(m, Lt) else (m.le, False)
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _message(err: ErrorDetails, cls: type[BaseModel], prefix: str) -> str:
    """One error of pydantic's list as today's one-line wording."""
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    key = dotted(prefix, loc) or "config"
    if kind == "extra_forbidden":
        owner, _ = _annotation_at(cls, loc[:-1])
        known = ", ".join(getattr(owner, "model_fields", {}))
        return f"unknown key '{key}' (known keys in {dotted(prefix, loc[:-1]) or 'config'}: {known})"
    if kind in MAPPING_TYPES:
        return f"{key}: expected a mapping of keys, got {type(value).__name__}"
    if kind in TYPE_WORDS:
        return f"{key}: expected {TYPE_WORDS[kind]}, got {type(value).__name__} {value!r}"
    tp, meta = _annotation_at(cls, loc)
    if kind in RANGE_TYPES:
        shown = float(value) if tp is float else value
        return f"{key}: {shown} is out of range {interval(meta)}"
    if kind == "finite_number":
        return f"{key}: {value} is not a finite number"
    if kind == "literal_error" and get_origin(tp) is Literal:
        while loc and isinstance(loc[-1], int):  # name the list, the value says which item
            loc = loc[:-1]
        return f"{dotted(prefix, loc)}: {value!r} is not one of {', '.join(map(str, get_args(tp)))}"
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SectionError):
        section = dotted(prefix, loc)
        where = f"{section}." if section else ""
        return f"{where}{cause.key}: {cause.text.replace('{p}', where)}" if cause.key else f"{key}: {cause.text}"
    if cause is not None:
        return f"{key}: {cause}"
    return f"{key}: {err['msg']}"
