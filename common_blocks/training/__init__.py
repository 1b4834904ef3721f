"""One fold of one model family: config, models, losses, optimisers, the LightningModule and
DataModule, callbacks, checkpoints. Imports ``data`` and ``evaluation``.

Importing this package declares torchvision's missing operators before torchvision first loads
(``torchvision_compat``), so that its modules may load Lightning, smp and timm next to PyPI's
CUDA-built torchvision; the package itself imports no torch, so the config schema loads without it.
"""

from common_blocks.torchvision_compat import declare_before_torchvision

declare_before_torchvision()
