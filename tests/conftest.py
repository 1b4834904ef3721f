"""Shared fixtures: the real Severstal sample, which lives outside the repository."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from benchmarks.common import REAL_SAMPLE  # the one place that says where the real sample lives

# The installed console script (make installs the project into the venv in editable mode).
SEVERSTAL = str(Path(sys.executable).with_name("severstal"))


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
    return Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty weight caches (HF_HUB_OFFLINE too): whatever tries to download fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for variable in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "empty-cache"))
