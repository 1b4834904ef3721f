"""Where the repository and its debug configs are, for tests in any folder."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEBUG = CONFIGS / "debug.yaml"
DEBUG_GATE = CONFIGS / "debug_classifier.yaml"
ENSEMBLE = CONFIGS / "ensemble_debug.yaml"
