"""Shared fixtures: the real Severstal sample (outside the repository), the synthetic data, untrained
debug runs and an OOF run over them. Test modules take them as arguments, never by import."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from benchmarks.common import REAL_SAMPLE  # the one place that says where the real sample lives
from tests.repository import DEBUG


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real sample folder (train_images/, train.csv, ...); skips the test when it is absent."""
    if not (REAL_SAMPLE / "train.csv").is_file():
        pytest.skip(f"real Severstal sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the Kaggle layout (24 train, 8 test images), made once per session."""
    from common_blocks.data.synthetic import generate

    folder = tmp_path_factory.mktemp("synthetic")
    generate(folder, n_train=24, n_test=8, seed=11, workers=1)
    return folder


@pytest.fixture(scope="session")
def debug_config() -> Path:
    return DEBUG


@pytest.fixture(scope="module")
def data(synthetic_data: Path) -> Path:
    """The synthetic data with the debug config's folds file, as training writes it."""
    from common_blocks.training.config import load_config
    from common_blocks.training.folds_file import write_missing_folds

    write_missing_folds(load_config(DEBUG, [f"data.data_dir={synthetic_data}"]))
    return synthetic_data


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Untrained folds 0 and 1 of the debug segmenter and gate; one set per module, which may change it."""
    from tests.debug_runs import write_debug_runs

    return write_debug_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory, runs: Path, data: Path):
    """``severstal oof`` of the debug ensemble over ``runs`` (TTA none + hflip): its config, stdout
    and arguments."""
    import yaml

    from tests.cli_contract import run_in_process
    from tests.debug_runs import debug_ensemble

    out = tmp_path_factory.mktemp("oof")
    cfg = debug_ensemble(out, runs, data, "tta=[none, hflip]")
    config = out / "ensemble_debug.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["oof", "--config", config, "--workers", 0]
    outcome = run_in_process(*args)
    assert outcome.code == 0, outcome.stderr
    return cfg, outcome.stdout, args


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty weight caches (HF_HUB_OFFLINE too): whatever tries to download fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: without this its client retries the refused
    # connection with backoff (about 23 s) before it fails
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for variable in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "empty-cache"))


MODEL_FIXTURES = {
    "runs",  # debug checkpoints, which the tests taking them load and predict with
    "oof_run",
    "head_runs",
    "untrained_ensemble",
    "trained_segmenter",  # these train
    "averaged_run",
    "base_run",
    "smoke",  # a whole benchmark run
}
"""Fixtures holding models: every test taking one is ``slow``."""


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), each worker and the commands its
    tests start get their share of the cores: torch's default of one thread per core in every worker
    makes the threads of two workers spin against each other (the suite took 6 min 41 s on two
    cores, against 4 min 43 s with a thread each)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the child processes' torch reads it at import
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the tests that load, train or run a model through their fixtures, so that
    ``make test-fast`` (``-m "not slow and not subprocess"``) leaves them out with the tests that do
    so themselves (marked where they are written)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
