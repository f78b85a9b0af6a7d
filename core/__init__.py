"""SoilSSL's QGIS-free engine.

Importing it first makes sure that torch runs its fp32 matrix products with its own BLAS.
``qgis_process``/QGIS link the system BLAS (OpenBLAS on Debian) into the executable, and
torch's libtorch_cpu exports the same ``sgemm_`` symbol as its built-in MKL: a plain
``import torch`` there binds torch's GEMMs to the system OpenBLAS (its own thread pool on
top of torch's), which made ViT forwards up to 6x slower inside QGIS than in Python
(benchmark ``extract_ratio_e2e``).  When another library already provides ``sgemm_`` in
the process, torch is imported with RTLD_DEEPBIND so that it resolves its own symbols first.
"""
import ctypes
import os
import sys


def _import_torch_with_its_own_blas() -> None:
    if "torch" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    try:
        ctypes.CDLL(None).sgemm_
    except (AttributeError, OSError):
        return  # no BLAS in the global scope (plain Python): nothing to shadow torch's
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import torch  # noqa: F401
    except ImportError:
        pass  # reported by the algorithms (missing packages)
    finally:
        sys.setdlopenflags(flags)


_import_torch_with_its_own_blas()
