"""Train one fold of one model family: ``python train.py --fold K [--config configs/NAME.yaml]``
(without ``--config``, the main model family ``configs/fpn_se_resnext50.yaml``).

The same as ``severstal train``; ``python train.py --help`` lists the options.
"""

import sys

from common_blocks.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="train.py", commands=["train"])
