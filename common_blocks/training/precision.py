"""Which numeric precision a run trains in: ``trainer.precision: auto`` picks bf16 where the hardware
computes it natively and fp32 elsewhere, where bf16 would be emulated and slower than fp32.

The CPU's answer comes from ``backend_names.cpu_has_bf16``, the one test of the CPU.
"""

from __future__ import annotations

import torch

from common_blocks.backend_names import CPU_BF16_FLAGS, cpu_has_bf16

AUTO = "auto"


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
    chosen = "bf16" if native else "fp32"
    return chosen, f"trainer.precision auto: {chosen} ({where})"
