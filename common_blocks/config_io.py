"""YAML config files: read, apply ``--set key.path=value`` overrides, validate against a schema.

The training config and the ensemble config are both read this way; an unknown key, a missing key or
a wrong type is a ConfigError naming the file and the key path. Needs only yaml and pydantic.

Validation is strict: a value must already have its field's type (``true`` is not an integer,
``3.0`` is not an integer, ``"3"`` is not a number), as in JSON, with JSON's conveniences only: a
string for a path, a list for a tuple, an integer for a float; NaN and infinity are refused anywhere.
YAML reads ``1e-4`` as a number (YAML 1.2), not as the string PyYAML's YAML 1.1 rules make of it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from common_blocks.errors import ConfigError
from common_blocks.files import read_input

_SHOWN_INPUT = 80  # longest repr of a bad value an error line quotes


class Section(BaseModel):
    """A config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid")


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def listed(names: Iterable[str]) -> str:
    """Registered names as a field's description shows them (``"`a`, `b`"``): descriptions name what
    the registries hold, never a copy of them."""
    return ", ".join(f"`{name}`" for name in names)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-4``) as numbers, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML with the config loader (a YAMLError when it is not YAML)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _decode(path: Path, data: bytes) -> str:
    """The UTF-8 text of a config file (a BOM allowed), whatever the locale; ConfigError otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping at the top of a YAML file."""
    path = Path(path)
    data = read_input(path, ConfigError, "config file not found")
    try:
        tree = parse_yaml(_decode(path, data))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return tree


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{source}: {'.'.join(keys[: depth + 1])} is not a section, cannot set {dotted}"
            )
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values read as YAML) to a raw config tree."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        try:
            value = parse_yaml(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML") from None
        _set_path(tree, key.strip(), value, f"--set {override}")
    return tree


def describe_issue(error: ValidationError) -> str:
    """The first problem pydantic found, as ``key.path: problem (got value)`` on one line.

    The value is quoted only when it is short and not the whole tree (a model-level check's input).
    """
    issue = error.errors()[0]
    path = ".".join(str(part) for part in issue["loc"]) or "(top level)"
    if issue["type"] == "extra_forbidden":
        return f"unknown key {path}"
    if issue["type"] == "missing":
        return f"missing key {path}"
    message = " ".join(str(issue["msg"]).split())
    shown = repr(issue.get("input"))
    if issue["loc"] and "input" in issue and len(shown) <= _SHOWN_INPUT and "\n" not in shown:
        return f"{path}: {message} (got {shown})"
    return f"{path}: {message}"


def config_error(error: ValidationError, source: str) -> ConfigError:
    """The first problem pydantic found, as one line naming ``source`` and the key path."""
    return ConfigError(f"{source}: {describe_issue(error)}")


def validate_strict(schema: type[SchemaT], tree: Any) -> SchemaT:
    """``tree`` validated as ``schema`` in pydantic's strict mode, as JSON: the types must match
    (no bool for an int, no float for an int, no string for a number), except that a string is a path,
    a list a tuple and an integer a float. A pydantic ValidationError otherwise.

    Values JSON lacks (a YAML date) are read as their text; a recursive tree (YAML aliases) is a
    ValueError.
    """
    text = json.dumps(tree, default=str, allow_nan=True)
    return schema.model_validate_json(text, strict=True)


def _first_non_finite(tree: Any) -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinity in a tree of dicts and lists (aliases are
    visited once, so a recursive tree ends)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(tree, ())]
    seen: set[int] = set()
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return ".".join(map(str, where)) or "(top level)", node
        if isinstance(node, (dict, list)) and id(node) not in seen:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend(reversed([(value, (*where, key)) for key, value in items]))
    return None


def validate_tree(schema: type[SchemaT], tree: dict[str, Any], source: str) -> SchemaT:
    """``tree`` validated (strictly, see ``validate_strict``; no NaN or infinity anywhere) as
    ``schema``; a ConfigError naming ``source`` and the key otherwise."""
    non_finite = _first_non_finite(tree)
    if non_finite is not None:
        raise ConfigError(f"{source}: {non_finite[0]}: expected a finite number, got {non_finite[1]}")
    try:
        return validate_strict(schema, tree)
    except ValidationError as error:
        raise config_error(error, source) from None
    except (TypeError, ValueError, RecursionError) as error:  # not JSON-like: a recursive alias, odd keys
        raise ConfigError(f"{source}: not a tree of plain values ({error})") from None


YAML_SUFFIXES = (".yaml", ".yml")


def config_name(path: str | os.PathLike) -> str:
    """The run name a config file trains into: its ``name``, else the file's stem."""
    return str(read_yaml(path).get("name", Path(path).stem))


def load_config_file(
    schema: type[SchemaT], path: str | os.PathLike, overrides: list[str] | None = None
) -> SchemaT:
    """Read, override and validate a config file; its ``name`` defaults to the file's stem."""
    tree = read_yaml(path)
    tree.setdefault("name", Path(path).stem)
    apply_overrides(tree, overrides or [])
    return validate_tree(schema, tree, str(path))
