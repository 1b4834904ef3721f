"""Predict the test images with an ensemble into ``submission.csv``: ``python inference.py [--config CFG]``
(without ``--config``, ``configs/ensemble.yaml``).

The same as ``severstal infer``; ``python inference.py --help`` lists the options.
"""

import sys

from common_blocks.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="inference.py", commands=["infer"])
