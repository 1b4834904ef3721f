"""Shared fixtures: the real Severstal sample, which lives outside the repository."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The installed console script (make installs the project into the venv in editable mode).
SEVERSTAL = str(Path(sys.executable).with_name("severstal"))
REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "severstal-sample"


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
