"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def images_dir(tmp_path) -> Path:
    """An image folder of three (empty) files: a.jpg, b.jpg, c.jpg, for the label readers' checks."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(b"")
    return folder
