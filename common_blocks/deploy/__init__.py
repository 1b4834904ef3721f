"""Deployment: exported networks, their backends and the offline Kaggle bundle.
May import everything above it (data, evaluation, training, inference)."""
