"""Deployment: exported networks, their backends and the offline Kaggle bundle.
May import everything above it (data, evaluation, training, inference), but never Lightning: the
exports and the bundle are of the plain networks (``training.network``), and the bundle ships no
Lightning."""
