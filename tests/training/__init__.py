"""Tests of common_blocks/training/."""
