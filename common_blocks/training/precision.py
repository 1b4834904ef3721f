"""Which numeric precision a run trains in: ``trainer.precision: auto`` picks bf16 where the hardware
computes it natively and 32-bit elsewhere, where bf16 would be emulated and slower than fp32.

``cpu_has_bf16`` is the one test of the CPU (the exported backends and the benchmarks ask it too).
"""

from __future__ import annotations

from pathlib import Path

import torch

AUTO = "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 instructions (its ``flags`` list ``avx512_bf16`` or ``amx_bf16``);
    elsewhere bf16 would be emulated, slower than fp32."""
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


def resolve_precision(precision: str, accelerator: str) -> tuple[str, str | None]:
    """``precision`` with ``auto`` decided for ``accelerator`` ("gpu" or "cpu"), and why (None when
    the config named one itself: nothing to say)."""
    if precision != AUTO:
        return precision, None
    if accelerator == "gpu":
        native = torch.cuda.is_bf16_supported()
        where = f"the GPU {'supports' if native else 'does not support'} bf16"
    else:
        native = cpu_has_bf16()
        where = f"the CPU {'has' if native else 'has no'} bf16 instructions ({' / '.join(CPU_BF16_FLAGS)})"
    chosen = "bf16-mixed" if native else "32"
    return chosen, f"trainer.precision auto: {chosen} ({where})"
