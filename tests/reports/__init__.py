"""Tests of common_blocks/reports/."""
