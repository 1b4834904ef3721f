"""Tests of common_blocks/deploy/."""
