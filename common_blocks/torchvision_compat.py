"""Let the package import next to a torchvision whose compiled ops do not match the installed torch.

PyPI serves torchvision as a CUDA build; next to the CPU build of torch its ``_C`` extension fails
to load, and ``import torchvision`` then dies with ``operator torchvision::nms does not exist``
because it registers fake kernels for ``nms`` and ``qnms`` unconditionally. Declaring those two
operator schemas first lets the import succeed; the ops themselves stay unavailable, which is fine
because nothing here uses detection ops. Where torchvision's own extension loads (a matched install),
this does nothing.

``declare_before_torchvision`` arranges this without importing torch itself: it runs
``ensure_torchvision_ops`` the moment something first imports torchvision (smp, timm, Lightning), so a
package that calls it stays importable without torch (the config schemas load on their own).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_FALLBACK_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fallback_library: torch.library.Library | None = None


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    package_dir = Path(spec.origin).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package_dir / f"_C{suffix}"
        if candidate.exists():
            return candidate
    return None


def _own_ops_load(extension: Path) -> bool:
    import torch

    try:
        torch.ops.load_library(str(extension))
    except (OSError, ImportError):
        return False
    return True


def ensure_torchvision_ops() -> bool:
    """Make ``import torchvision`` work; return True when fallback schemas had to be declared."""
    global _fallback_library
    if _fallback_library is not None:
        return True
    extension = _extension_path()
    if extension is None or _own_ops_load(extension):
        return False
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _FALLBACK_SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, name):
            library.define(schema)
    _fallback_library = library
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Finds nothing: its one job is to run ``ensure_torchvision_ops`` before the first import of
    torchvision goes on to the real finders."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision_ops()


def declare_before_torchvision() -> None:
    """``ensure_torchvision_ops`` now if torchvision is loaded, else just before it first is."""
    if "torchvision" in sys.modules:
        ensure_torchvision_ops()
    elif not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
