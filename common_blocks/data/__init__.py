"""The Kaggle files and images: RLE, label and submission formats, folds, synthetic data, datasets,
augmentation and samplers. Imports only the top-level ``errors`` and ``files``; torch only in the
datasets and samplers, so formats, folds and the synthetic generator load without it."""

import os

# albumentations asks PyPI for a newer release at every import: up to 2 s in each process that
# augments or loads images, and a network request from an offline kernel. The version is pinned
# here, so the answer is never used; a user's own setting of the variable is kept.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
