"""Keeps native libraries that crash QGIS desktop out of the QGIS process.

Why: on Linux, ``pip install torch`` brings ``triton``.  Importing timm imports
``torch._dynamo``, which imports ``triton`` just to know whether it is there; loading
``triton/_C/libtriton.so`` runs the static initialisers of the LLVM that triton bundles.
QGIS desktop has already loaded Mesa's ``libLLVM-15`` (``swrast_dri.so``; the Intel and
AMD drivers on Debian 12 link the same library), the two LLVMs' global registries
(``llvm::DebugCounter``) collide and QGIS dies with signal 11 -- the first time any
algorithm loads a ViT.  ``qgis_process`` and offscreen tests never load Mesa, so they pass.

SoilSSL never uses triton inside QGIS (no ``torch.compile``: triton only compiles GPU
kernels for it), so :func:`keep_out` makes ``import triton`` fail before SoilSSL first
imports torch: ``sys.modules["triton"] = None`` is the standard way to mark a module
absent -- ``import triton`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec("triton")`` returns ``None``, which are exactly the two checks
torch makes (``torch.utils._triton.has_triton_package``, ``torch.cuda``, ``torch._native``)
before it falls back to its triton-free paths.  ``TORCH_COMPILE_DISABLE=1`` is set as well,
so that a ``torch.compile`` reached by any code in the QGIS process runs eagerly instead of
looking for a compiler.

Where it runs: ``classFactory`` (QGIS loading the plugin, desktop and ``qgis_process``) and
``soilssl.algorithms`` (imported only inside QGIS), i.e. always before the algorithms
import ``soilssl.core``.  It is *not* applied by ``import soilssl`` or ``soilssl.core``: a
notebook or ``python -m soilssl.core.pretrain`` under ``torchrun`` has no Mesa LLVM to clash
with and may legitimately use triton (``torch.compile`` on a GPU); a script that mixes
PyQGIS GUI and SoilSSL calls ``soilssl.nativeguard.keep_out()`` first.

If another plugin imported triton before SoilSSL loaded, nothing can unload it: the state
found is reported (and QGIS has survived it, or we would not be running).  If it imported
torch but not triton, blocking still works, since torch imports triton lazily (through
``torch._dynamo``).

QGIS-free (the tests run it in a plain interpreter); the caller shows the returned report.
"""
import logging
import os
import sys

# Modules whose import loads a second LLVM into the process.
BLOCKED = ("triton",)
LOGGER = "soilssl"


class GuardReport:
    """What :func:`keep_out` found and did, per module: ``blocked`` (SoilSSL made it
    unimportable now), ``already-blocked`` (an earlier call did), ``loaded`` (imported by
    someone else before SoilSSL: cannot be undone) or ``absent`` (not installed)."""

    def __init__(self, states, torch_loaded, native_llvm):
        self.states = states
        self.torch_loaded = torch_loaded
        self.native_llvm = native_llvm

    @property
    def changed(self):
        return any(s == "blocked" for s in self.states.values())

    @property
    def loaded(self):
        return [m for m, s in self.states.items() if s == "loaded"]

    @property
    def level(self):
        return logging.WARNING if self.loaded else logging.INFO

    def message(self):
        parts = []
        for name, state in self.states.items():
            if state == "blocked":
                parts.append(f"{name} blocked in this process (it loads its own LLVM, which "
                             "crashes QGIS desktop next to Mesa's; SoilSSL does not need it)")
            elif state == "already-blocked":
                parts.append(f"{name} already blocked")
            elif state == "absent":
                parts.append(f"{name} not installed, nothing to block")
            else:
                module = sys.modules.get(name)
                where = getattr(module, "__file__", None) or "?"
                parts.append(f"{name} was already imported before SoilSSL loaded ({where}), "
                             "probably by another plugin; it cannot be unloaded. If QGIS "
                             "crashes when a SoilSSL algorithm starts, disable the plugin "
                             "that imports torch/triton first")
        parts.append("torch already imported" if self.torch_loaded else "torch not imported yet")
        if self.native_llvm:
            parts.append("LLVM libraries loaded: " + ", ".join(self.native_llvm))
        return "SoilSSL native-library guard: " + "; ".join(parts) + "."


def _loaded_llvm():
    """LLVM libraries mapped into this process (Linux ``/proc``; elsewhere [])."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths
                  if "libLLVM" in os.path.basename(p) or os.path.basename(p) == "libtriton.so")


def _installed(name):
    import importlib.machinery
    return importlib.machinery.PathFinder.find_spec(name) is not None


def keep_out(names=BLOCKED, log=True):
    """Make each module of ``names`` unimportable in this process, unless already imported.

    Idempotent; returns a :class:`GuardReport` and, with ``log``, logs it once per new
    finding on the ``soilssl`` logger (info when all was blocked, warning when a module
    was already loaded)."""
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    states = {}
    for name in names:
        if name in sys.modules:
            states[name] = "already-blocked" if sys.modules[name] is None else "loaded"
        elif not _installed(name):
            sys.modules[name] = None  # absent anyway: keep it so if installed meanwhile
            states[name] = "absent"
        else:
            sys.modules[name] = None
            states[name] = "blocked"
    report = GuardReport(states, "torch" in sys.modules, _loaded_llvm())
    if log and any(s != "already-blocked" for s in states.values()):
        logging.getLogger(LOGGER).log(report.level, report.message())
    return report
