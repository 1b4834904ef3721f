"""One fold of one model family: config, models, losses, optimisers, the LightningModule and
DataModule, callbacks, checkpoints. Imports ``data`` and ``evaluation``.

Importing this package declares torchvision's missing operators first (``torchvision_compat``), so
that its modules may load Lightning, smp and timm next to PyPI's CUDA-built torchvision.
"""

from common_blocks.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()
