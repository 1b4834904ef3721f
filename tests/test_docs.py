"""The documentation matches the repository: the paths and links it names exist, the config page
names every config key (and no other), and nothing speaks of how the code came to be written."""

import re
from pathlib import Path

import pydantic

from common_blocks.training.config import TrainConfig
from tests.repository import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# config keys the page documents as a whole: free-form arguments, a list of terms, an optional block
WHOLE = {"model": ("type", "args"), "loss": (), "class_head": ()}


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


def _config_keys(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    """The dotted keys of ``model``'s fields, nested sections expanded."""
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + name
        if key in WHOLE:
            keys |= {key} if not WHOLE[key] else {f"{key}.{sub}" for sub in WHOLE[key]}
            continue
        section = field.annotation
        if isinstance(section, type) and issubclass(section, pydantic.BaseModel):
            keys |= _config_keys(section, key + ".")
        else:
            keys.add(key)
    return keys


def _documented_keys(page: str) -> set[str]:
    """The keys in the first column of the config page's table; a bare name after a dotted one in the
    same cell is in that one's section (``augment.hflip``, ``vflip``)."""
    keys = set()
    for line in page.splitlines():
        if not line.startswith("| `"):
            continue
        section = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if "." in name:
                section = name.rsplit(".", 1)[0] + "."
                keys.add(name)
            else:
                keys.add(section + name)
    return keys


def test_the_config_page_names_every_config_key_and_no_other():
    documented = _documented_keys((ROOT / "docs" / "config.md").read_text(encoding="utf-8"))
    # model.args.* are the smp/timm arguments the page lists; loss[i].args.* a loss term's
    documented = {"model.args" if key.startswith("model.args.") else key for key in documented}
    documented = {key for key in documented if not key.startswith("loss[")}
    schema = _config_keys(TrainConfig)
    assert not schema - documented, f"undocumented config keys: {sorted(schema - documented)}"
    assert not documented - schema, f"documented keys the config does not have: {sorted(documented - schema)}"


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
