"""``docs/config.md``, generated from the config schemas, so that the page cannot drift from the code.

Every key's meaning is its pydantic ``Field(description=...)`` in the schema, and its default the
field's own; the page adds only the short prose below (``INTRO`` and each table's lead-in). Keys of a
free ``args`` mapping the pipeline itself reads are declared beside the field, in its
``json_schema_extra={"documented_args": {name: {"default", "description"}}}``; a default that is not
a value (a name defaulting to the file's stem) is ``json_schema_extra={"shown_default": text}``.

``python -m common_blocks.reports.config_reference`` writes the page; ``--check`` exits 1 when it
differs (``tests/test_docs.py`` runs the same check). It is a page for people, so it lives with the
other things a person reads (``reports``), above both schemas it reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from common_blocks.config_io import parse_yaml
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.training.config import TrainConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"
COMMAND = "python -m common_blocks.reports.config_reference"

INTRO = """\
A config is YAML; `--set key.path=value` overrides any key (the value is read as YAML), and
`--data-dir` sets `data.data_dir`. An unknown key or a wrong type is an error naming the key path."""


@dataclass(frozen=True)
class Table:
    """One kind of config file: its heading, the prose before its table, and its schema."""

    heading: str
    lead: str
    schema: type[BaseModel]


TABLES = (
    Table(
        "Training config",
        "One YAML per model family (`configs/NAME.yaml`), read by `train.py`; the recipes are listed in "
        "[commands.md](commands.md). A section given in part keeps the defaults of the keys it leaves out.",
        TrainConfig,
    ),
    Table(
        "Ensemble config",
        "The runs to average, how, and how to post-process the average (`configs/ensemble.yaml`, "
        "`configs/ensemble_debug.yaml`), read by `validate.py oof`, `inference.py` and every other command "
        "that runs an ensemble (see [commands.md](commands.md)); `--data-dir` sets `data_dir`.",
        EnsembleConfig,
    ),
)


@dataclass(frozen=True)
class Row:
    """One key path of a table, its rendered default and its meaning."""

    key: str
    default: str
    meaning: str


def _models_in(annotation: Any) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """``(section, element)``: the model of a ``Model`` / ``Model | None`` field, and the element model
    of a ``list[Model]`` / ``tuple[Model, ...]`` field (None where the field is neither)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]
        return (models[0] if len(models) == 1 and type(None) in args else None), None
    if origin in (list, tuple) and args:
        element = args[0]
        if isinstance(element, type) and issubclass(element, BaseModel):
            return None, element
    return None, None


def _float(value: float) -> str:
    """``0.5``, ``3.0``; small numbers as people write them in a config (``1e-3``)."""
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(value)


def _string(value: str) -> str:
    """A plain YAML scalar where it reads back as the same string, else double-quoted."""
    try:
        plain = parse_yaml(value) == value and not any(c in value for c in ",[]{}#")
    except Exception:  # any string YAML cannot read plain (an alias star, a tab)
        plain = False
    return value if plain else '"' + value.replace('"', '\\"') + '"'


def flow(value: Any) -> str:
    """``value`` (JSON-like: what ``model_dump(mode="json")`` gives) as YAML flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__} {value!r}")


def _dumped(value: Any) -> Any:
    """A default as it would be written in a config: models without their default keys, paths as strings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, (list, tuple)):
        return [_dumped(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def render_default(value: Any) -> str:
    """A default for the table: null, true/false and numbers bare, strings and collections as code;
    a section or list of sections at its own defaults points to the rows of its keys."""
    is_model = isinstance(value, BaseModel)
    value = _dumped(value)
    if value == {} and is_model:
        return "the defaults below"
    if isinstance(value, list) and value and all(item == {} for item in value):
        return f"{len(value)} x the defaults below"
    text = flow(value)
    bare = value is None or isinstance(value, (bool, int, float))
    return text if bare else f"`{text}`"


def _field_default(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    if field.is_required():
        return "required"
    return render_default(field.get_default(call_default_factory=True))


def rows(schema: type[BaseModel], prefix: str = "") -> Iterator[Row]:
    """A row per key path of ``schema``, in field order. A section's keys are ``section.key`` (the
    section has a row of its own only when it is described: an optional one, say); a list of models
    is one row and its element's keys ``list[i].key``; a free mapping's documented keys follow it."""
    for name, field in schema.model_fields.items():
        key = prefix + name
        section, element = _models_in(field.annotation)
        if field.description is None and section is None:
            raise ValueError(f"{schema.__name__}.{name} ({key}) has no Field(description=...)")
        if field.description is not None:
            yield Row(key, _field_default(field), field.description)
        if section is not None:
            yield from rows(section, key + ".")
        elif element is not None:
            yield from rows(element, key + "[i].")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        for arg, spec in extra.get("documented_args", {}).items():
            yield Row(f"{key}.{arg}", render_default(spec["default"]), spec["description"])


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole page."""
    parts = [
        "# Config reference",
        f"<!-- generated by `{COMMAND}` from the schemas' Field descriptions: edit those, then rerun it -->",
        INTRO,
    ]
    for table in TABLES:
        lines = ["| key | default | meaning |", "| --- | --- | --- |"]
        lines += [
            f"| `{row.key}` | {_cell(row.default)} | {_cell(row.meaning)} |" for row in rows(table.schema)
        ]
        parts += [f"## {table.heading}", table.lead, "\n".join(lines)]
    return "\n\n".join(parts) + "\n"


def write_page(path: Path, text: str) -> None:
    """Replace ``path`` whole with ``text``: a temporary file in the same folder, then ``os.replace``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with ``--check`` say (exit 1) when it is out of date."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else None
        if current != text:
            print(f"{PAGE}: out of date; run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    write_page(PAGE, text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
