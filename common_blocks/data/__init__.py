"""The Kaggle files and images: RLE, label and submission formats, folds, synthetic data, datasets,
augmentation and samplers. Imports only the top-level ``errors`` and ``files``; torch only in the
datasets and samplers, so formats, folds and the synthetic generator load without it."""
