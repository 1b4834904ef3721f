"""Pseudo-label rounds: which test images an ensemble labels confidently enough to train on, and the
round that predicts, selects and writes them. Imports ``inference`` and below."""
