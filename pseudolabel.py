"""One pseudo-label round over the test images: ``python pseudolabel.py --config CFG --round R``.

The same as ``severstal pseudo``; ``python pseudolabel.py --help`` lists the options.
"""

import sys

from common_blocks.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="pseudolabel.py", commands=["pseudo"])
