"""The predicting backends and the precisions: the one table the command line's choices, ``--backend
auto``, the predictor, the exported runtimes and the training config all read, and whether this CPU
computes bf16. Imports no torch, so that the command line offers them, and a config checks them,
without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The networks' arithmetic, in the words every command and config uses; everything after the
# networks is fp32. fp16 runs on CUDA only, bf16 on CUDA or a CPU with bf16 instructions.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
# What Lightning's Trainer calls each (``trainer.precision`` reaches it only through this mapping); the
# training config also reads these spellings, which earlier configs and checkpoints hold.
LIGHTNING_PRECISIONS: dict[str, str] = {"fp32": "32", "fp16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass(frozen=True)
class Runtime:
    """An ONNX runtime that runs exported networks on the CPU. Its name is its Python package and
    its extra (``pip install '.[NAME]'``)."""

    precisions: tuple[str, ...]  # what it runs on the CPU
    compiler: str  # "module:function" from (an .onnx file, a precision) to a NumPy network, imported on use
    rank: int  # ``--backend auto`` takes the installed runtime of lowest rank (the fastest measured)


RUNTIMES: dict[str, Runtime] = {
    "openvino": Runtime(("fp32", "bf16"), "common_blocks.deploy.onnx_runtimes:compile_openvino", rank=1),
    # ONNX Runtime's CPU provider has no bf16 kernels for these networks.
    "onnxruntime": Runtime(("fp32",), "common_blocks.deploy.onnx_runtimes:compile_onnxruntime", rank=2),
}
BACKENDS: tuple[str, ...] = ("auto", "torch", *RUNTIMES)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 instructions (its ``flags`` list ``avx512_bf16`` or ``amx_bf16``);
    elsewhere bf16 would be emulated, slower than fp32. The one test of the CPU: ``trainer.precision:
    auto``, ``--precision bf16`` and the benchmarks all ask it."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def no_cpu_bf16_reason() -> str | None:
    """Why this CPU should not run bf16 (it has no bf16 instructions), or None when it can."""
    if cpu_has_bf16():
        return None
    return (
        f"this CPU has no bf16 instructions (neither {' nor '.join(CPU_BF16_FLAGS)} in /proc/cpuinfo flags)"
    )
