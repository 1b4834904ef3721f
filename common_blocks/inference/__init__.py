"""Ensembles of trained runs: their config, the predictor (TTA, averaging, gate), the submission
writer and the out-of-fold local CV that tunes post-processing. Imports ``training`` and below, but
never Lightning: the networks are the plain ``training.network.DefectNetwork`` read from checkpoints
(``tests/test_package.py`` checks it)."""
