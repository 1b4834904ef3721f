"""The wheels of the offline Kaggle bundle, which the notebook installs without network.

The pins are the versions installed here (``installed_versions``, ``pinned``); the dependency wheels
are downloaded with pip or taken from a folder (``dependency_wheels``, ``find_wheels``), each checked
to be the wheel its name says (``check_wheel``); the project's own wheel is built from the running
source tree (``build_project_wheel``). ``bundle`` decides which distributions and writes the folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from common_blocks.errors import ConfigError, DataError, PipelineError

PROJECT = "severstal-pipeline"  # the distribution of this package: its wheel and its pin
# The files of a source tree setuptools may read besides the package itself.
_BUILD_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README*", "LICENSE*")


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The version installed here of each distribution: the bundle pins what was tested here."""
    versions, missing = {}, []
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: not installed here, so no version to bundle (install them, or "
            "--no-dependency-wheels if the notebook's image has them)"
        )
    return versions


def pinned(versions: dict[str, str]) -> list[str]:
    """``NAME==VERSION`` of each distribution, as pip and requirements.txt take them."""
    return [f"{name}=={version}" for name, version in versions.items()]


def find_wheels(folder: Path, versions: dict[str, str]) -> list[Path]:
    """The wheels in ``folder`` of each distribution at its version (all platforms found); one error
    listing those it lacks."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    found: dict[tuple[str, Version], list[Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        found.setdefault((name, version), []).append(path)
    wheels, missing = [], {}
    for name, version in versions.items():
        matching = found.get((canonicalize_name(name), Version(version)), [])
        wheels += matching
        if not matching:
            missing[name] = version
    if missing:
        wanted = " ".join(pinned(missing))
        raise DataError(
            f"{folder}: no wheel of {wanted} (--wheels-from; make them with "
            f"pip download --no-deps --only-binary=:all: -d {folder} {wanted})"
        )
    for wheel in wheels:
        check_wheel(wheel)
    return wheels


def check_wheel(path: Path) -> None:
    """A DataError naming ``path`` unless it is a readable zip whose ``.dist-info/METADATA`` names the
    distribution and version its file name says: pip in the notebook would fail on anything else."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    name, version, _, _ = parse_wheel_filename(path.name)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            metadata_files = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            text = (
                archive.read(metadata_files[0]).decode("utf-8", "replace") if len(metadata_files) == 1 else ""
            )
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable wheel ({error}); download it again") from None
    if broken is not None:
        raise DataError(f"{path}: damaged wheel ({broken} fails its CRC check); download it again")
    fields = dict(line.split(": ", 1) for line in text.split("\n\n")[0].splitlines() if ": " in line)
    try:
        same = (
            canonicalize_name(fields.get("Name", "")) == name
            and Version(fields.get("Version", "")) == version
        )
    except InvalidVersion:
        same = False
    if not same:
        raise DataError(
            f"{path}: its METADATA does not say {name} {version} (a wheel needs one .dist-info/METADATA "
            "with its Name and Version); download it again"
        )


def _pip(*args: str, what: str) -> None:
    """Run this interpreter's pip; a failure is one error with pip's last line."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise PipelineError(
            f"{what} failed: {lines[-1] if lines else f'pip exit status {result.returncode}'}"
        )


def project_root() -> Path:
    """The source tree of the running package: the bundle's project wheel is built from it."""
    import common_blocks

    root = Path(common_blocks.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise PipelineError(
            f"{root}: no pyproject.toml beside common_blocks/; severstal bundle builds the project's wheel "
            "from its source tree, so run it from a checkout (pip install -e .)"
        )
    return root


def build_project_wheel(root: Path, wheels: Path) -> Path:
    """The project's wheel, built without network from a copy of the source tree: setuptools leaves
    its build/ and egg-info folders in the copy, not in the checkout."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    with tempfile.TemporaryDirectory(prefix="severstal-wheel-") as scratch:
        source = Path(scratch) / "source"
        source.mkdir()
        for pattern in _BUILD_FILES:
            for path in root.glob(pattern):
                if path.is_file():
                    shutil.copy2(path, source / path.name)
        shutil.copytree(
            root / "common_blocks",
            source / "common_blocks",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        _pip(
            "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source),
            what=f"building the project's wheel from {root}",
        )  # fmt: skip
    built = [p for p in wheels.glob("*.whl") if parse_wheel_filename(p.name)[0] == canonicalize_name(PROJECT)]
    if len(built) != 1:
        raise PipelineError(f"building the project's wheel from {root} gave {len(built)} wheels, not one")
    return built[0]


def dependency_wheels(versions: dict[str, str], wheels_from: Path | None, wheels: Path) -> list[Path]:
    """The dependency wheels, put in ``wheels``: copied from ``wheels_from``, else downloaded from PyPI."""
    if wheels_from is None:
        if versions:
            _pip(
                "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *pinned(versions),
                what="downloading the dependency wheels (--wheels-from DIR copies them from a folder instead)",
            )  # fmt: skip
        return find_wheels(wheels, versions)
    chosen = find_wheels(wheels_from, versions)
    for path in chosen:
        shutil.copy2(path, wheels / path.name)
    return [wheels / path.name for path in chosen]
