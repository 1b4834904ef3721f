"""Tests of common_blocks/data/."""
