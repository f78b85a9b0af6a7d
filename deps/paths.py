"""Where SoilSSL keeps its Python packages, and putting them on ``sys.path``.

The folder is ``<QGIS profile>/python/soilssl-deps/python<X.Y>``: one virtual environment per
Python version, so a QGIS upgrade that brings another Python never loads wheels built for the
old one.  ``SOILSSL_DEPS_DIR`` replaces ``<QGIS profile>/python/soilssl-deps`` (tests, CI,
shared installations).
"""
import importlib
import os
import site
import sys

ENV_VAR = "SOILSSL_DEPS_DIR"
MANIFEST = "soilssl-deps.json"


def python_tag(version_info=None):
    v = version_info or sys.version_info
    return f"python{v[0]}.{v[1]}"


def deps_root(settings_dir=None):
    """The folder holding SoilSSL's environments (one per Python version)."""
    if os.environ.get(ENV_VAR):
        return os.path.abspath(os.environ[ENV_VAR])
    if settings_dir is None:
        from qgis.core import QgsApplication
        settings_dir = QgsApplication.qgisSettingsDirPath()
    return os.path.join(settings_dir, "python", "soilssl-deps")


def env_dir(root=None, version_info=None):
    """The virtual environment for this Python (it may not exist yet)."""
    return os.path.join(root or deps_root(), python_tag(version_info))


def env_python(env, platform=None):
    """The interpreter of a virtual environment made by ``python -m venv``."""
    if (platform or sys.platform).startswith("win"):
        return os.path.join(env, "Scripts", "python.exe")
    return os.path.join(env, "bin", "python")


def site_packages(env, version_info=None, platform=None):
    """Where ``python -m venv`` + pip put packages in ``env`` (the venv layout, every OS)."""
    if (platform or sys.platform).startswith("win"):
        return os.path.join(env, "Lib", "site-packages")
    return os.path.join(env, "lib", python_tag(version_info), "site-packages")


def activate(env=None):
    """Put the environment's site-packages first on ``sys.path`` (with its ``.pth`` files).

    Call this before anything imports torch.  Returns ``(folder or None, message)``: None
    when SoilSSL has installed nothing (QGIS's own packages are then used as they are).
    Packages imported before the call (e.g. torch by another plugin) stay what they are:
    Python never imports a module twice; the message says so.
    """
    try:
        env = env or env_dir()
    except ImportError:  # outside QGIS and no SOILSSL_DEPS_DIR: nothing of ours to add
        return None, "SoilSSL dependencies: not in QGIS, nothing to add"
    folder = site_packages(env)
    if not os.path.isdir(folder):
        return None, f"SoilSSL dependencies: none installed in {env}"
    norm = os.path.normcase(os.path.abspath(folder))
    if norm not in (os.path.normcase(os.path.abspath(p)) for p in sys.path):
        before = list(sys.path)
        site.addsitedir(folder)  # also runs the folder's .pth files, appending to sys.path
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before  # ours first: what SoilSSL installed is what it uses
        importlib.invalidate_caches()
    message = f"SoilSSL dependencies: using {folder}"
    early = imported_elsewhere(folder)
    if early:
        message += (f" ({', '.join(early)} already imported by QGIS or another plugin from "
                    f"elsewhere: that copy stays in use until QGIS restarts)")
    return folder, message


def imported_elsewhere(folder):
    """Top-level modules the folder holds that are already imported from somewhere else
    (they stay in use until QGIS restarts)."""
    names = set()
    for entry in os.listdir(folder):
        name = entry[:-3] if entry.endswith(".py") else entry
        if name.isidentifier() and not name.startswith("_"):
            names.add(name)
    early = []
    for name in sorted(names):
        where = getattr(sys.modules.get(name), "__file__", None)  # None: blocked/namespace
        if where and not _inside(where, folder):
            early.append(name)
    return early


def is_active(env=None):
    folder = os.path.normcase(os.path.abspath(site_packages(env or env_dir())))
    return folder in {os.path.normcase(os.path.abspath(p)) for p in sys.path}


def _inside(path, folder):
    path, folder = (os.path.normcase(os.path.abspath(p)) for p in (path, folder))
    return path == folder or path.startswith(folder + os.sep)


def activate_and_log():
    """``activate()`` at plugin start, saying in QGIS's log what was done."""
    folder, message = activate()
    try:
        from qgis.core import Qgis, QgsMessageLog
        QgsMessageLog.logMessage(message, "SoilSSL", Qgis.Info)
    except ImportError:
        pass
    return folder
