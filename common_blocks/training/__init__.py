"""One fold of one model family: config, models, losses, optimisers, the LightningModule and
DataModule, callbacks, checkpoints. Imports ``data`` and ``evaluation``.

The network itself is ``network.DefectNetwork``, a plain ``nn.Module`` (its input, outputs and task
mode, ``modes``); the LightningModule (``module.DefectModule``) is that network with training added.
Prediction reads checkpoints into the plain network (``checkpoints.load_checkpoint``), so
``network``, ``modes``, ``checkpoints``, ``config`` and ``folds_file`` import no Lightning.

Importing this package declares torchvision's missing operators before torchvision first loads
(``torchvision_compat``), so that its modules may load Lightning, smp and timm next to PyPI's
CUDA-built torchvision; the package itself imports no torch, so the config schema loads without it.
"""

from common_blocks.torchvision_compat import declare_before_torchvision

declare_before_torchvision()
