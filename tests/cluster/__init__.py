"""Tests of common_blocks/cluster/."""
