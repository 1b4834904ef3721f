"""How a predicting job reads its images and runs its networks: ``PredictOptions``, the one object
the predicting commands (``infer``, ``oof``, ``pseudo``) and the sweep's OOF job pass down. Imports
nothing, so that the command line builds it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PredictOptions:
    """``--batch-size`` and ``--workers`` (the image loader), ``--backend``, ``--precision`` and
    ``--exported`` (what runs the networks: ``deploy.backend_choice.choose_backend`` checks them and
    ``backend_runtime`` makes the predictor's ``Runtime`` of them)."""

    batch_size: int = 4
    workers: int | None = None  # image-decoding processes; None: 0 on the CPU, 2 with a GPU
    backend: str = "torch"
    precision: str = "fp32"
    exported: Path | None = None
