"""Offline validation: ``python validate.py score|checkpoint|oof|report ...``.

The same as ``severstal score|checkpoint|oof|report``; ``python validate.py --help`` lists them.
"""

import sys

from common_blocks.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="validate.py", commands=["score", "checkpoint", "oof", "report"])
