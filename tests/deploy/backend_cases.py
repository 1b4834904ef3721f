"""The backends and precisions the tests run, read off ``backend_names.RUNTIMES``: a runtime added
to that table is tested by every test that takes its cases, without a line more."""

from __future__ import annotations

import importlib.util

import pytest

from common_blocks.backend_names import RUNTIMES, cpu_has_bf16


def backend_cases(with_torch: bool = True) -> list[tuple[str, str, pytest.MarkDecorator]]:
    """(backend, precision, skip mark) for torch (unless ``with_torch`` is false) and every runtime of
    the table, in each precision it runs on the CPU; skipped where its extra is not installed, or bf16
    where the CPU has no bf16 instructions."""
    cases = [("torch", "fp32", ()), ("torch", "bf16", ())] if with_torch else []
    cases += [
        (name, precision, (name, "onnx"))
        for name, runtime in RUNTIMES.items()
        for precision in runtime.precisions
    ]
    marked = []
    for backend, precision, modules in cases:
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        reason = f"not installed: {', '.join(missing)} (pip install '.[{backend}]')" if missing else None
        if precision == "bf16" and not cpu_has_bf16():
            reason = "this CPU has no avx512_bf16 / amx_bf16"
        marked.append((backend, precision, pytest.mark.skipif(reason is not None, reason=reason or "")))
    return marked
