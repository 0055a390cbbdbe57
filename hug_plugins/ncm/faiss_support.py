"""Finding FAISS and its GPUs, and the OpenBLAS core type its CPU wheel detected."""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------------------------
# FAISS discovery
# --------------------------------------------------------------------------------------------


def import_faiss() -> Any:
    import faiss

    return faiss


def faiss_available() -> bool:
    """Returns whether the ``faiss`` module can be imported."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def faiss_num_gpus() -> int:
    """Returns ``faiss.get_num_gpus()``, or 0 when FAISS is missing or CPU-only."""
    try:
        faiss = import_faiss()
    except ImportError:
        return 0
    getter = getattr(faiss, "get_num_gpus", None)
    return int(getter()) if getter is not None else 0


def faiss_openblas_coretype() -> str | None:
    """Returns the CPU core type that the OpenBLAS bundled with FAISS detected, if known.

    The faiss-gpu wheel bundles OpenBLAS 0.3.15, which detects some recent Xeons as the old
    ``Prescott`` core and then runs its SGEMM (and so FAISS's CPU flat search) several times
    slower; ``OPENBLAS_CORETYPE=SkylakeX`` (or ``Zen``), set before the process starts, fixes it.
    """
    if not faiss_available():
        return None
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return None
    for info in threadpool_info():
        if info.get("internal_api") == "openblas" and "faiss" in str(info.get("filepath", "")):
            arch = info.get("architecture")
            return str(arch) if arch is not None else None
    return None
