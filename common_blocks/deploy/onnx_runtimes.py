"""The ONNX runtimes that run exported networks on the CPU (``backend_names.RUNTIMES``): OpenVINO and
ONNX Runtime, and their compilers.

Both are optional extras (``pip install '.[openvino]'``, ``'.[onnxruntime]'``), imported only when a
command uses one; a missing one is a one-line error naming the install command. Each compiles one
``.onnx`` file into a function from a float32 NumPy batch to the network's output, with torch's
number of threads, so that every backend gets the same cores.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from common_blocks.backend_names import RUNTIMES
from common_blocks.errors import ConfigError, DataError

OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # INFERENCE_PRECISION_HINT; unset, AMX CPUs pick bf16

NumpyNetwork = Callable[[np.ndarray], np.ndarray]


def install_hint(*extras: str) -> str:
    """The install command of an extra (or of any one of several), in the repository."""
    return "install it: " + " or ".join(f"pip install '.[{extra}]'" for extra in extras)


def import_runtime(name: str) -> ModuleType:
    """The runtime's Python package; a ConfigError naming the install command when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"--backend {name}: {name} is not installed; {install_hint(name)}") from None


def installed_runtimes() -> list[str]:
    """The runtimes that import here, fastest first (by rank)."""
    installed = []
    for name in sorted(RUNTIMES, key=lambda runtime: RUNTIMES[runtime].rank):
        try:
            import_runtime(name)
        except ConfigError:
            continue
        installed.append(name)
    return installed


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``. Each Core loads its own CPU plugin, which swaps the thread's
    signal stack (``sigaltstack``) for one of its own and puts the previous one back when torn down;
    two Cores torn down first-in-first-out leave the thread on the freed stack of the first, and the
    next signal a Python handler catches (a child's SIGCHLD once torch's DataLoader has set its
    handler) cannot be delivered: SIGSEGV. One Core has one plugin and no such order."""
    return import_runtime("openvino").Core()


def compile_openvino(path: Path, precision: str) -> NumpyNetwork:
    """``path`` compiled by OpenVINO for the CPU in ``precision``, on torch's threads."""
    core = openvino_core()
    # the ONNX front end alone: a file it cannot parse is not handed on to the other front ends
    onnx = importlib.import_module("openvino.frontend").FrontEndManager().load_by_framework("onnx")
    compiled = core.compile_model(
        onnx.convert(onnx.load(str(path))),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    request = compiled.create_infer_request()
    # infer() copies the outputs (share_outputs=False): the next call reuses the request's buffers
    return lambda images: request.infer({0: images})[0]


def compile_onnxruntime(path: Path, precision: str) -> NumpyNetwork:
    """``path`` as an ONNX Runtime CPU session on torch's threads (fp32 only)."""
    onnxruntime = import_runtime("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings would reach the terminal
    # Its threads sleep between runs instead of spinning: spinning held the cores that decoding and
    # post-processing need (cpu_small end to end 55 instead of 47 img/s on 2 cores; the network
    # alone 10% slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def compiler(runtime: str) -> Callable[[Path, str], NumpyNetwork]:
    """The compiler ``RUNTIMES`` names for ``runtime``, imported now."""
    module, _, name = RUNTIMES[runtime].compiler.partition(":")
    return getattr(importlib.import_module(module), name)


def check_runtime_precision(runtime: str, precision: str) -> None:
    """A ConfigError when ``runtime`` does not run ``precision`` on the CPU."""
    runs = RUNTIMES[runtime].precisions
    if precision not in runs:
        others = [name for name, other in RUNTIMES.items() if precision in other.precisions]
        raise ConfigError(
            f"--backend {runtime} runs {' and '.join(runs)} only, not "
            f"--precision {precision}; use --backend {' or '.join([*others, 'torch'])} for {precision}"
        )


def compile_network(runtime: str, path: Path, precision: str) -> NumpyNetwork:
    """``path``'s network compiled by ``runtime`` to run in ``precision``; a file the runtime cannot
    parse or compile is one DataError naming it and the runtime (their messages run to pages)."""
    check_runtime_precision(runtime, precision)
    try:
        return compiler(runtime)(path, precision)
    except (ConfigError, MemoryError):
        raise
    except Exception as error:  # each runtime raises its own types (InvalidProtobuf, GeneralFailure, ...)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1][:160] if lines else "no message"  # the last line says what, the first where
        raise DataError(
            f"{path}: {runtime} cannot load this network ({type(error).__name__}: {reason}); export "
            "it again with severstal export"
        ) from None
