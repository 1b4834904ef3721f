"""The documentation matches the repository: the paths and links it names exist, the config page
is generated from the schemas and names every config key (and no other), and nothing speaks of how
the code came to be written."""

import re
import typing
from pathlib import Path

import pydantic
import pytest

from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.reports import config_reference
from common_blocks.training.config import TrainConfig
from tests.repository import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CONFIG_PAGE = ROOT / "docs" / "config.md"
# free-form mappings: the page may list keys inside them (the arguments the pipeline itself reads)
FREE = ("model.args", "loss[i].args")


def test_every_repository_path_the_docs_name_exists():
    """A path in backticks under one of the repository's folders must be there: renamed modules leave
    no stale pointers behind."""
    folders = "common_blocks|configs|tests|benchmarks|scripts|docs"
    missing = []
    for document in DOCUMENTS:
        named = set(re.findall(rf"`((?:{folders})/[A-Za-z0-9_./-]+)`", document.read_text(encoding="utf-8")))
        missing += [
            f"{document.name}: {path}" for path in named if not (ROOT / path).exists() and "NAME" not in path
        ]
    assert not missing, missing


def test_every_relative_link_of_the_docs_resolves():
    broken = []
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", document.read_text(encoding="utf-8")):
            if "://" not in target and not (document.parent / target).exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken, broken


def _section(annotation: object) -> tuple[type[pydantic.BaseModel] | None, str]:
    """The model a field holds and how its keys follow the field's: ``Model`` or ``Model | None`` as
    ``key.sub``, ``list[Model]`` or ``tuple[Model, ...]`` as ``key[i].sub``."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, "."
    models = [
        a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, pydantic.BaseModel)
    ]
    if not models:
        return None, ""
    return models[0], "[i]." if typing.get_origin(annotation) in (list, tuple) else "."


def _config_keys(model: type[pydantic.BaseModel], prefix: str = "") -> tuple[set[str], set[str]]:
    """``(keys, sections)``: the key paths of ``model``'s values, nested sections expanded, and the
    paths of the sections themselves (which the page may describe as a whole too)."""
    keys, sections = set(), set()
    for name, field in model.model_fields.items():
        key = prefix + name
        section, joint = _section(field.annotation)
        if section is None:
            keys.add(key)
            continue
        sections.add(key)
        inner_keys, inner_sections = _config_keys(section, key + joint)
        keys |= inner_keys
        sections |= inner_sections
    return keys, sections


def _documented_keys(page: str, heading: str) -> set[str]:
    """The keys in the first column of the table under ``## heading``; a bare name after a dotted one
    in the same cell is in that one's section (``augment.hflip``, ``vflip``)."""
    keys = set()
    current = None
    for line in page.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        if current != heading or not line.startswith("| `"):
            continue
        section = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if "." in name:
                section = name.rsplit(".", 1)[0] + "."
                keys.add(name)
            else:
                keys.add(section + name)
    return keys


@pytest.mark.parametrize(
    ("heading", "schema"), [("Training config", TrainConfig), ("Ensemble config", EnsembleConfig)]
)
def test_the_config_page_names_every_config_key_and_no_other(heading, schema):
    documented = _documented_keys(CONFIG_PAGE.read_text(encoding="utf-8"), heading)
    # model.args.* are the smp/timm arguments the page lists; loss[i].args.* a loss term's
    documented = {next((free for free in FREE if key.startswith(free + ".")), key) for key in documented}
    keys, sections = _config_keys(schema)
    assert not keys - documented, f"undocumented config keys: {sorted(keys - documented)}"
    unknown = documented - keys - sections - set(FREE)
    assert not unknown, f"documented keys the config does not have: {sorted(unknown)}"


def test_the_config_page_is_generated_from_the_schemas():
    """docs/config.md is the generator's output: a key's meaning is its ``Field(description=...)``."""
    assert CONFIG_PAGE.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/config.md is out of date: run `python -m common_blocks.reports.config_reference`"
    )


def test_the_generator_writes_the_page_and_its_check_names_a_stale_one(tmp_path, monkeypatch, capsys):
    page = tmp_path / "config.md"
    monkeypatch.setattr(config_reference, "PAGE", page)
    assert config_reference.main(["--check"]) == 1  # missing
    assert config_reference.main([]) == 0
    assert page.read_text(encoding="utf-8") == config_reference.render()
    assert [p.name for p in tmp_path.iterdir()] == ["config.md"]  # no temporary file left
    assert config_reference.main(["--check"]) == 0
    page.write_text(page.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    capsys.readouterr()
    assert config_reference.main(["--check"]) == 1
    assert capsys.readouterr().err == f"{page}: out of date; run {config_reference.COMMAND}\n"


def test_no_file_speaks_of_issue_numbers_or_work_sessions():
    pattern = re.compile(r"\bissue \d+|\bissue #\d+|\b(this|earlier|previous) session\b", re.IGNORECASE)
    found = []
    for folder in ("common_blocks", "configs", "tests", "benchmarks", "scripts", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".yaml"} and path != Path(__file__):
                found += [
                    f"{path.relative_to(ROOT)}: {m.group()}"
                    for m in pattern.finditer(path.read_text(encoding="utf-8"))
                ]
    found += [
        f"README.md: {m.group()}" for m in pattern.finditer((ROOT / "README.md").read_text(encoding="utf-8"))
    ]
    assert not found, found
