"""Tests of common_blocks/inference/."""
