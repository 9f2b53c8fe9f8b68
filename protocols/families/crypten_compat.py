"""Import CrypTen 0.4.1 (the peer baseline) on torch 2.13 without touching files on disk.

The shim: ``crypten/nn/onnx_converter.py`` runs, at import time,
``from torch.onnx._internal.registration import registry``. torch 2.13 moved that module
to ``torch.onnx._internal.torchscript_exporter.registration``, so ``import crypten``
fails with ModuleNotFoundError. ``import_crypten()`` imports the new module and registers
it in ``sys.modules`` under the old dotted name (and as the attribute of its parent
package) before importing crypten; Python's import system then finds it there. Nothing
is patched when the old path still exists (older torch), and no installed file is
edited. The alias is process-wide and harmless: it only adds a second name for a module.

Install notes (REFERENCES.md, "CrypTen 0.4.1"): ``pip install --no-deps crypten==0.4.1``
plus pyyaml, omegaconf and onnx; keep the ``configs`` folder the wheel puts in
site-packages (CrypTen reads ``configs/default.yaml``). Known defect kept in mind by
callers: ``FixedPointEncoder.decode`` mis-decodes some negative values below -1, so
decode revealed ring values yourself (``raw / scale``) where exactness matters.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

OLD = "torch.onnx._internal.registration"
NEW = "torch.onnx._internal.torchscript_exporter.registration"


def _install_shim() -> None:
    """Alias NEW as OLD in ``sys.modules`` when OLD cannot be imported."""
    if OLD in sys.modules:
        return
    try:
        importlib.import_module(OLD)
        return  # an older torch: nothing to do
    except ImportError:
        pass
    try:
        module = importlib.import_module(NEW)
    except ImportError as exc:
        raise ImportError(
            f"CrypTen needs {OLD!r}; this torch has neither it nor {NEW!r} "
            f"(torch layout changed again?): {exc}") from exc
    sys.modules[OLD] = module
    parent = importlib.import_module(OLD.rsplit(".", 1)[0])
    if not hasattr(parent, "registration"):
        setattr(parent, "registration", module)


def import_crypten() -> ModuleType:
    """Install the torch 2.13 shim if needed, then import and return ``crypten``."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"CrypTen needs torch, which is not importable: {exc}") from exc
    _install_shim()
    try:
        import crypten
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise ImportError(
            f"cannot import crypten (missing: {missing}). Install its runtime needs "
            "(pyyaml, omegaconf, onnx) and then `pip install --no-deps crypten==0.4.1`; "
            "see REFERENCES.md, 'CrypTen 0.4.1'.") from exc
    return crypten
