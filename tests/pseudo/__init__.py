"""Tests of common_blocks/pseudo/."""
