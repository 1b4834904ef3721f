"""severstal bundle: the Kaggle folder installs into a fresh environment without network or Lightning
and predicts, from its own files alone, the submission the source tree predicts; bad input is one
error line and leaves no folder, and ``--overwrite`` replaces a bundle whole or not at all.

The ensemble is the untrained debug runs of ``conftest.py``, tuned by its OOF run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from common_blocks.deploy.bundle import DEPENDENCY_WHEELS, ENSEMBLE, KAGGLE_DATA, MARKER, TRAINING_STATE
from common_blocks.deploy.bundle_wheels import PROJECT, find_wheels, installed_versions
from common_blocks.errors import DataError
from tests.cli_contract import assert_one_error_line, assert_unchanged, run_in_process, snapshot
from tests.repository import DEBUG, ROOT

pytestmark = pytest.mark.slow  # every test here trains, loads or runs a model

DATASET = "severstal-test"
# The tuned gate thresholds drop every mask of these untrained runs: the bundled config gates at 0
# (and predicts without flips, which halves the networks' time).
OVERRIDES = ("--set", "gate.threshold=0.0", "--set", "tta=[none]")


@pytest.fixture(scope="module")
def ensemble_file(oof_run) -> Path:
    """The tuned debug ensemble's YAML (absolute paths to the runs, the data and thresholds.json)."""
    cfg, _, args = oof_run
    assert cfg.thresholds_path.is_file()
    return Path(args[2])


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory, ensemble_file, data) -> Path:
    """A stand-in for the notebook's /kaggle: the bundle in input/DATASET (built without network:
    the project's wheel only), the competition data beside it, working/ for the submission."""
    root = tmp_path_factory.mktemp("kaggle")
    (root / "working").mkdir()
    (root / "input").mkdir()
    (root / KAGGLE_DATA.relative_to("/kaggle")).symlink_to(data)
    outcome = run_in_process(
        "bundle",
        "--config",
        ensemble_file,
        "--out",
        root / "input" / DATASET,
        "--no-dependency-wheels",
        *OVERRIDES,
    )
    assert outcome.code == 0, outcome.stderr
    assert f"wrote the bundle {root / 'input' / DATASET}: 4 checkpoint(s), tuned thresholds, 1 wheel(s)" in (
        outcome.stdout
    )
    return root


def environment_without(dists: tuple[str, ...], view: Path) -> Path:
    """``view``: links to this environment's installed packages except those of ``dists``, which is
    what a fresh environment reads through a .pth line (torch and the rest come from here, the
    project only from what is installed into it)."""
    left_out = {
        Path(str(path)).parts[0] for dist in dists for path in (metadata.distribution(dist).files or [])
    }
    view.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name not in left_out and not entry.name.endswith(".pth"):
            (view / entry.name).symlink_to(entry)
    return view


def fresh_environment(root: Path, view: Path) -> Path:
    """A new venv without pip or network that sees ``view``; ``pip`` runs the viewed pip in it."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "environment.pth").write_text(f"{view}\n")
    pip = venv / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{venv / "bin" / "python"}" -m pip "$@"\n')
    pip.chmod(0o755)
    return venv


def notebook_lines(readme: Path, kaggle: Path) -> list[str]:
    """The README's ``!`` lines, with /kaggle/ standing for ``kaggle``."""
    lines = [line[1:] for line in readme.read_text().splitlines() if line.startswith("!")]
    return [line.replace("/kaggle/", f"{kaggle}/") for line in lines]


@pytest.mark.subprocess
def test_the_bundle_installs_offline_and_predicts_the_source_trees_submission(
    kaggle, ensemble_file, tmp_path
):
    bundle = kaggle / "input" / DATASET
    # nor training's framework, which the bundle does not ship: the notebook predicts without it
    left_out = (PROJECT, "lightning", "pytorch-lightning", "lightning-utilities", "torchmetrics")
    venv = fresh_environment(tmp_path, environment_without(left_out, tmp_path / "view"))
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONNOUSERSITE": "1",
    }
    install, infer = notebook_lines(bundle / "README.md", kaggle)
    for line in (install, infer):
        result = subprocess.run(
            ["bash", "-c", line], cwd=kaggle / "working", env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert "using tuned post-processing from thresholds.json" in result.stdout
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import common_blocks; print(common_blocks.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where).is_relative_to(venv), where  # the installed wheel, not the checkout

    source = run_in_process("infer", "--config", ensemble_file, *OVERRIDES, "--out", tmp_path / "source.csv")
    assert source.code == 0, source.stderr
    submission = (kaggle / "working" / "submission.csv").read_bytes()
    assert submission == (tmp_path / "source.csv").read_bytes()
    assert re.search(rb"\.jpg,\d+ \d+", submission)  # masks were predicted, not only empty rows


def test_the_bundle_refers_only_to_its_own_files(kaggle, oof_run):
    cfg, _, _ = oof_run
    bundle = kaggle / "input" / DATASET
    text = (bundle / ENSEMBLE).read_text()
    assert str(kaggle.parent) not in text and str(ROOT) not in text
    tree = yaml.safe_load(text)
    assert tree["runs_dir"] == "runs" and tree["data_dir"] == str(KAGGLE_DATA)
    assert [m["config"] for m in tree["members"]] == ["debug"]  # run names, no config paths
    assert tree["gate"]["config"] == "debug_classifier"
    assert tree["postprocess"]["thresholds_file"] == "thresholds.json"
    assert tree["gate"]["threshold"] == 0.0 and tree["tta"] == ["none"]  # --set applies before it is written
    assert (bundle / "thresholds.json").read_bytes() == cfg.thresholds_path.read_bytes()
    for ref in cfg.runs:
        for fold in ref.folds:
            bundled = ref.checkpoint_path(bundle / "runs", fold)
            checkpoint = torch.load(bundled, map_location="cpu", weights_only=True)
            original = torch.load(
                ref.checkpoint_path(cfg.runs_dir, fold), map_location="cpu", weights_only=True
            )
            assert not set(TRAINING_STATE) & set(checkpoint)
            assert checkpoint["hyper_parameters"] == original["hyper_parameters"]
            assert all(torch.equal(v, original["state_dict"][k]) for k, v in checkpoint["state_dict"].items())
            config = yaml.safe_load((bundled.parent / "config.yaml").read_text())
            assert config == original["hyper_parameters"]["config"]
    wheels = sorted(p.name for p in (bundle / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].startswith("severstal_pipeline-")
    assert (bundle / "requirements.txt").read_text().splitlines() == [f"{PROJECT}=={wheels[0].split('-')[1]}"]
    assert not [p for p in kaggle.joinpath("input").iterdir() if p.name.startswith(".")]  # no staging left


def test_wheels_from_picks_each_dependency_at_its_installed_version(tmp_path):
    versions = installed_versions(DEPENDENCY_WHEELS)
    wanted = []
    for name, version in versions.items():
        stem = f"{name.replace('-', '_')}-{version}"
        tags = (
            ["cp311-cp311-manylinux_2_17_x86_64", "cp312-cp312-win_amd64"]
            if name == "pydantic-core"
            else ["py3-none-any"]
        )
        wanted += [f"{stem}-{tag}.whl" for tag in tags]
    others = ["lightning-0.0.1-py3-none-any.whl", "numpy-2.0.0-py3-none-any.whl", "not-a-wheel.whl"]
    for name in [*wanted, *others]:
        write_wheel(tmp_path / name)
    assert sorted(p.name for p in find_wheels(tmp_path, versions)) == sorted(wanted)
    (tmp_path / wanted[0]).unlink()
    missing = f"{DEPENDENCY_WHEELS[0]}=={versions[DEPENDENCY_WHEELS[0]]}"
    with pytest.raises(DataError, match=f"no wheel of {re.escape(missing)} "):
        find_wheels(tmp_path, versions)


def write_wheel(path: Path, metadata: str | None = None) -> None:
    """A wheel file as pip reads it: a zip with NAME-VERSION.dist-info/METADATA naming both."""
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as archive:
        text = (
            metadata if metadata is not None else f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        archive.writestr(f"{name}-{version}.dist-info/METADATA", text)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("random", "not a readable wheel"),
        ("other metadata", "its METADATA does not say pydantic"),
        ("no metadata", "its METADATA does not say pydantic"),
    ],
)
def test_a_wheel_that_pip_could_not_install_is_one_error_line_and_no_folder(
    ensemble_file, tmp_path, content, fragment
):
    """Checked before anything is written: a file named like a wheel must be one."""
    versions = installed_versions(DEPENDENCY_WHEELS)
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, version in versions.items():
        write_wheel(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl")
    bad = folder / f"pydantic-{versions['pydantic']}-py3-none-any.whl"
    if content == "random":
        bad.write_bytes(os.urandom(3000))
    elif content == "other metadata":
        write_wheel(bad, "Name: pydantic\nVersion: 0.0.1\n")
    else:
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("pydantic/__init__.py", "")
    outcome = run_in_process(
        "bundle", "--config", ensemble_file, "--out", tmp_path / "bundle", "--wheels-from", folder
    )
    assert_one_error_line(outcome, str(bad), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


@pytest.fixture
def runs_copy(tmp_path, runs) -> Path:
    copy = tmp_path / "runs_copy"
    shutil.copytree(runs, copy)
    return copy


def bundle_of(ensemble_file: Path, runs: Path, out: Path, *args: object):
    return run_in_process(
        "bundle",
        "--config",
        ensemble_file,
        "--set",
        f"runs_dir={runs}",
        "--out",
        out,
        "--no-dependency-wheels",
        *args,
    )


def test_a_missing_checkpoint_is_one_error_line_and_no_folder(ensemble_file, runs_copy, tmp_path):
    missing = runs_copy / "debug_classifier" / "fold1" / "best.ckpt"
    missing.unlink()
    outcome = bundle_of(ensemble_file, runs_copy, tmp_path / "bundle")
    assert_one_error_line(outcome, "1 checkpoint(s) of ensemble ensemble_debug missing", str(missing))
    assert not (tmp_path / "bundle").exists()


def test_a_missing_dependency_wheel_is_one_error_line_and_no_folder(ensemble_file, tmp_path):
    (tmp_path / "wheels").mkdir()
    outcome = run_in_process(
        "bundle",
        "--config",
        ensemble_file,
        "--out",
        tmp_path / "bundle",
        "--wheels-from",
        tmp_path / "wheels",
    )
    assert_one_error_line(outcome, f"{tmp_path / 'wheels'}: no wheel of segmentation-models-pytorch==")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_overwrite_replaces_a_bundle_whole_or_not_at_all(ensemble_file, runs_copy, runs, tmp_path):
    out = tmp_path / "bundle"
    outcome = bundle_of(ensemble_file, runs, out)
    assert outcome.code == 0, outcome.stderr
    (out / "old.txt").write_text("left in an earlier bundle")
    before = snapshot(out)
    assert_one_error_line(bundle_of(ensemble_file, runs_copy, out), f"{out}: is not empty; pass --overwrite")
    assert_one_error_line(
        bundle_of(ensemble_file, runs_copy, runs_copy.parent, "--overwrite"), "is not a bundle this pipeline"
    )
    bad = runs_copy / "debug_classifier" / "fold0" / "best.ckpt"  # read after both debug checkpoints
    bad.write_bytes(bad.read_bytes()[:1000])
    assert_one_error_line(bundle_of(ensemble_file, runs_copy, out, "--overwrite"), str(bad), "truncated")
    assert_unchanged(before, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "runs_copy"]  # no staging left
    outcome = bundle_of(ensemble_file, runs, out, "--overwrite")
    assert outcome.code == 0, outcome.stderr
    assert not (out / "old.txt").exists() and (out / "README.md").is_file() and (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "runs_copy"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_bundle(ensemble_file, oof_run, runs, data, tmp_path):
    """A folder of the user's, the folder of the training configs and the ensemble's own data folder
    are each refused with --overwrite, in one line, and left as they were."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    configs = tmp_path / "configs"
    configs.mkdir()
    member = Path(shutil.copy(DEBUG, configs / "debug.yaml"))
    data_copy = Path(shutil.copytree(data, tmp_path / "syn3"))
    ensemble = tmp_path / "ensemble.yaml"
    tree = yaml.safe_load(ensemble_file.read_text())
    tree["members"][0]["config"] = str(member)
    ensemble.write_text(yaml.safe_dump({**tree, "data_dir": str(data_copy)}))
    before = snapshot(notes, configs, data_copy)
    cases = [
        (notes, f"{notes}: is not a bundle this pipeline wrote"),
        (configs, f"{configs}: is not a bundle this pipeline wrote"),
        (data_copy, f"{data_copy}: is not a bundle this pipeline wrote"),
        (data_copy / "new", "lies inside the ensemble's data_dir"),
    ]
    for out, message in cases:
        assert_one_error_line(bundle_of(ensemble, runs, out, "--overwrite"), message)
    (configs / MARKER).write_text('{"format": "severstal-bundle/1"}')  # even a bundle that holds an input
    assert_one_error_line(
        bundle_of(ensemble, runs, configs, "--overwrite"), f"{configs}: is the folder of the training configs"
    )
    (configs / MARKER).unlink()
    assert_unchanged(before, notes, configs, data_copy)
    assert snapshot(notes, configs, data_copy).keys() == before.keys()  # nothing added either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "ensemble.yaml", "notes", "syn3"]


def test_a_killed_bundle_leaves_nothing_the_next_run_does_not_clear(ensemble_file, runs, tmp_path):
    """What a killed run left beside --out (a half-built folder; an earlier bundle set aside between
    the two renames) is cleared or put back by the next run on the same --out."""
    out = tmp_path / "bundle"
    dead = 2**22 + 1  # above Linux's largest pid: never a running process
    half_built = tmp_path / f".bundle.{dead}-0123abcd.tmp"
    (half_built / "runs").mkdir(parents=True)
    (half_built / "runs" / "big.ckpt").write_bytes(b"0" * 1000)
    set_aside = tmp_path / f".bundle.{dead}-4567cdef.old"
    set_aside.mkdir()
    (set_aside / MARKER).write_text('{"format": "severstal-bundle/1"}')
    running = tmp_path / f".bundle.{os.getpid()}-89abcdef.tmp"  # a run still going: left alone
    running.mkdir()
    outcome = bundle_of(ensemble_file, runs, out)
    assert_one_error_line(outcome, f"{out}: is not empty; pass --overwrite")  # the earlier bundle is back
    assert not half_built.exists() and not set_aside.exists() and (out / MARKER).is_file()
    outcome = bundle_of(ensemble_file, runs, out, "--overwrite")
    assert outcome.code == 0, outcome.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "bundle"]


def test_a_checkpoint_in_another_folds_slot_is_refused_by_every_command(ensemble_file, runs_copy, tmp_path):
    """fold 1's best.ckpt copied into fold0/: scored out of fold it would see its own training images."""
    slot = runs_copy / "debug" / "fold0" / "best.ckpt"
    shutil.copyfile(runs_copy / "debug" / "fold1" / "best.ckpt", slot)
    where = ("--config", ensemble_file, "--set", f"runs_dir={runs_copy}")
    commands = {
        "oof": ["oof", *where, "--workers", 0],
        "infer": ["infer", *where, "--workers", 0, "--out", tmp_path / "submission.csv"],
        "export": ["export", *where, "--out", tmp_path / "onnx"],
        "bundle": ["bundle", *where, "--out", tmp_path / "bundle", "--no-dependency-wheels"],
    }
    for name, args in commands.items():
        outcome = run_in_process(*args)
        assert_one_error_line(outcome, f"{slot}: was trained as fold 1", "not fold 0"), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs_copy"]
