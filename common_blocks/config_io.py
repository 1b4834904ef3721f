"""YAML config files: read, apply ``--set key.path=value`` overrides, validate against a schema.

The training config and the ensemble config are both read this way; an unknown key, a missing key or
a wrong type is a ConfigError naming the file and the key path. Needs only yaml and pydantic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from common_blocks.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid")


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping at the top of a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read ({error})") from None
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
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML") from None
        _set_path(tree, key.strip(), value, f"--set {override}")
    return tree


def config_error(error: ValidationError, source: str) -> ConfigError:
    """The first problem pydantic found, as one line naming ``source`` and the key path."""
    issue = error.errors()[0]
    path = ".".join(str(part) for part in issue["loc"]) or "(top level)"
    if issue["type"] == "extra_forbidden":
        return ConfigError(f"{source}: unknown key {path}")
    if issue["type"] == "missing":
        return ConfigError(f"{source}: missing key {path}")
    shown = issue.get("input")
    return ConfigError(f"{source}: {path}: {issue['msg']} (got {shown!r})")


def validate_tree(schema: type[SchemaT], tree: dict[str, Any], source: str) -> SchemaT:
    """``tree`` validated as ``schema``; a ConfigError naming ``source`` otherwise."""
    try:
        return schema.model_validate(tree)
    except ValidationError as error:
        raise config_error(error, source) from None


def load_config_file(
    schema: type[SchemaT], path: str | os.PathLike, overrides: list[str] | None = None
) -> SchemaT:
    """Read, override and validate a config file; its ``name`` defaults to the file's stem."""
    tree = read_yaml(path)
    tree.setdefault("name", Path(path).stem)
    apply_overrides(tree, overrides or [])
    return validate_tree(schema, tree, str(path))
