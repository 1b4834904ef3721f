"""Train one fold of one model family: ``python train.py --config configs/NAME.yaml --fold K``.

The same as ``severstal train``; ``python train.py --help`` lists the options.
"""

import sys

from common_blocks.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="train.py", commands=["train"])
