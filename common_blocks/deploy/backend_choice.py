"""Which backend runs an ensemble's networks (``--backend``, ``--precision``, ``--exported``), and the
ONNX ones as the predictor's ``Runtime``.

``torch`` runs the checkpoints (autocast for bf16/fp16); ``openvino`` and ``onnxruntime`` run their
exported networks on the CPU, from ``--exported DIR`` (``severstal export``) or, without it, from an
export of the ensemble made into a temporary folder when the predictor first needs it. Either way the
backend is only the networks: TTA, averaging, the gate, post-processing and RLE are the predictor's.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from common_blocks.backend_names import BACKENDS, RUNTIMES, no_cpu_bf16_reason
from common_blocks.deploy.export import Export, export_ensemble, open_export
from common_blocks.deploy.onnx_runtimes import (
    check_runtime_precision,
    compile_network,
    import_runtime,
    installed_runtimes,
)
from common_blocks.errors import ConfigError, DataError
from common_blocks.inference.ensemble_config import EnsembleConfig
from common_blocks.inference.predictor import Network, check_precision


def _fastest(precision: str, device: torch.device) -> tuple[str, str]:
    """``auto``'s choice and why: torch on CUDA, else the fastest installed runtime that runs ``precision``."""
    if device.type == "cuda":
        return "torch", "a CUDA device"
    runners = [name for name, runtime in RUNTIMES.items() if precision in runtime.precisions]
    if not runners:
        return "torch", f"no ONNX runtime runs {precision} on a CPU"
    for name in installed_runtimes():
        if name in runners:
            return name, f"the fastest installed for {precision} on this CPU"
    return "torch", f"no ONNX runtime for {precision} is installed"


def choose_backend(backend: str, precision: str, exported: Path | None = None) -> str:
    """The backend to run, ``auto`` resolved (and said on stderr), once it is known to run ``precision``
    here: fp16 only on CUDA, bf16 on a CPU only with bf16 instructions, the runtime installed, and
    ``exported`` only for an ONNX backend. Any of these is a ConfigError before anything loads."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        backend, why = _fastest(precision, torch_device)
        print(f"backend: {backend} (--backend auto: {why})", file=sys.stderr)
    device = torch_device if backend == "torch" else torch.device("cpu")  # the runtimes run on the CPU
    if backend != "torch":
        check_runtime_precision(backend, precision)  # what the runtime runs, before what the device does
    check_precision(precision, device)
    if backend == "torch" and exported is not None:
        raise ConfigError(
            "--exported: the torch backend runs the checkpoints; exported networks need --backend "
            f"{' or '.join(RUNTIMES)}"
        )
    if exported is not None and not exported.is_dir():
        raise DataError(f"{exported}: no such folder (--exported takes a folder severstal export wrote)")
    if backend != "torch":
        import_runtime(backend)
    no_bf16 = no_cpu_bf16_reason() if precision == "bf16" and device.type == "cpu" else None
    if no_bf16 is not None:
        raise ConfigError(f"--precision bf16: {no_bf16}; use --precision fp32")
    return backend


class ExportedRuntime:
    """The predictor's ``Runtime`` for an ONNX backend: each checkpoint's network from an export,
    which ``export()`` gives (opened or made on first use)."""

    def __init__(self, name: str, export: Callable[[], Export]) -> None:
        self.name = name
        self.export = functools.cache(export)

    def load(self, checkpoint: Path, precision: str) -> Network:
        run = compile_network(self.name, self.export().network_file(checkpoint), precision)
        return lambda images: torch.from_numpy(run(np.ascontiguousarray(images.numpy(), dtype=np.float32)))


def _export_now(cfg: EnsembleConfig, folder: Path, backend: str) -> Export:
    started = time.perf_counter()
    manifest = export_ensemble(cfg, folder, [backend])
    print(
        f"exported {len(manifest['networks'])} network(s) for {backend} in {time.perf_counter() - started:.1f} s "
        "(severstal export writes them once, for --exported)",
        file=sys.stderr,
    )
    return open_export(folder)


@contextlib.contextmanager
def backend_runtime(
    backend: str, cfg: EnsembleConfig, exported: Path | None
) -> Iterator[ExportedRuntime | None]:
    """The ``Runtime`` of a chosen backend (``choose_backend``): None for torch; the networks of
    ``exported`` (checked now, before any model loads); or an export of ``cfg`` made into a temporary
    folder when the predictor first loads a network, removed at the end."""
    if backend == "torch":
        yield None
    elif exported is not None:
        export = open_export(exported)
        yield ExportedRuntime(backend, lambda: export)
    else:
        with tempfile.TemporaryDirectory(prefix="severstal-export-") as scratch:
            yield ExportedRuntime(backend, lambda: _export_now(cfg, Path(scratch) / "export", backend))
