"""Severstal steel defect detection: data formats, training, ensembling and scoring."""

from common_blocks.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()
