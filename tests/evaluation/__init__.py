"""Tests of common_blocks/evaluation/."""
