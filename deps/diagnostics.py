"""What SoilSSL runs with: versions, the torch build, the CUDA device and the paths, as text
(the Diagnostics dialog shows it with a copy button; the plugin also writes it to the log)."""
import json
import os
import platform
import site
import sys

from . import paths

PACKAGES = [("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"),
            ("rasterio", "rasterio"), ("scikit-learn", "sklearn"), ("numpy", "numpy")]


def _module(name):
    """(version, file) of an importable module, or (None, why not)."""
    try:
        module = __import__(name)
    except Exception as exc:  # an import can fail in many ways (a DLL, an ABI): say which
        return None, f"not importable ({type(exc).__name__}: {str(exc).splitlines()[0]})" \
            if str(exc) else f"not importable ({type(exc).__name__})"
    return getattr(module, "__version__", "?"), os.path.dirname(getattr(module, "__file__",
                                                                        "") or "")


def torch_lines():
    """The torch build and the CUDA device, if torch imports."""
    try:
        import torch
    except Exception:
        return [("torch build", "-"), ("CUDA device", "-")]
    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else "CPU only"
    if getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip}"
    try:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            device = (f"{torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.1f} GiB "
                      f"({torch.cuda.device_count()} device(s))")
        else:
            device = "none (SoilSSL runs on the CPU)"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            device += "; Apple GPU (MPS) available"
    except Exception as exc:
        device = f"error: {exc}"
    return [("torch build", build), ("CUDA device", device)]


def collect(qgis_version=None, env=None, python_for_pip=None):
    """[(label, value)] describing the running Python and SoilSSL's packages."""
    rows = [("QGIS", qgis_version or "-"),
            ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
            ("OS", platform.platform())]
    for label, module in PACKAGES:
        version, where = _module(module)
        rows.append((label, f"{version}  ({where})" if version else where))
    try:
        from osgeo import gdal
        rows.append(("GDAL", gdal.__version__))
    except Exception as exc:
        rows.append(("GDAL", f"not importable ({exc})"))
    rows += torch_lines()
    try:
        env = env or paths.env_dir()
    except ImportError:
        env = None
    if env:
        folder = paths.site_packages(env)
        state = "on sys.path" if paths.is_active(env) else (
            "installed, not on sys.path yet" if os.path.isdir(folder) else "nothing installed")
        rows.append(("deps folder", f"{env} ({state})"))
        manifest = os.path.join(env, paths.MANIFEST)
        if os.path.isfile(manifest):
            with open(manifest) as f:
                info = json.load(f)
            index = info.get("torch_index") or "PyPI"
            rows.append(("deps installed", f"{info.get('date', '?')}, torch build "
                         f"{info.get('torch_build', '?')} from {index}"))
    rows.append(("sys.executable", sys.executable))
    rows.append(("Python for pip", python_for_pip or "-"))
    sp = site.getsitepackages() if hasattr(site, "getsitepackages") else []
    rows.append(("site-packages", os.pathsep.join(sp) or "-"))
    rows.append(("user site", f"{site.getusersitepackages()} "
                 f"({'enabled' if site.ENABLE_USER_SITE else 'disabled'})"))
    return rows


def as_text(rows, title="SoilSSL diagnostics"):
    width = max(len(label) for label, _ in rows)
    return title + "\n" + "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def report(qgis_version=None):
    """The diagnostics text; finding pip's Python is included when it can be found."""
    from .installer import DepsError, find_python
    try:
        python = find_python()
    except DepsError as exc:
        python = f"not found ({exc})"
    return as_text(collect(qgis_version, python_for_pip=python))
