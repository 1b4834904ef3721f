"""The backends and precisions the tests run, read off ``backend_names.RUNTIMES``: a runtime added
to that table is tested by every test that takes its cases, without a line more; and the skip marks
for the optional extras and for bf16."""

from __future__ import annotations

import importlib.util

import pytest

from common_blocks.backend_names import RUNTIMES, cpu_has_bf16


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every module imports; the first names the optional extra that installs them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    reason = f"not installed: {', '.join(missing)} (pip install '.[{modules[0]}]')" if missing else ""
    return pytest.mark.skipif(bool(missing), reason=reason)


def needs_bf16() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no avx512_bf16 / amx_bf16")


def backend_cases(with_torch: bool = True) -> list[tuple[str, str, list[pytest.MarkDecorator]]]:
    """(backend, precision, skip marks) for torch (unless ``with_torch`` is false) and every runtime of
    the table, in each precision it runs on the CPU; skipped where its extra is not installed, or bf16
    where the CPU has no bf16 instructions."""
    cases = [("torch", "fp32", ()), ("torch", "bf16", ())] if with_torch else []
    cases += [
        (name, precision, (name, "onnx"))
        for name, runtime in RUNTIMES.items()
        for precision in runtime.precisions
    ]
    return [
        (backend, precision, [needs(*modules), *([needs_bf16()] if precision == "bf16" else [])])
        for backend, precision, modules in cases
    ]
