"""Installing SoilSSL's packages into its own folder: the plan, pip's progress, the finish.

The plan, for the Python that QGIS runs (found by ``find_python``; inside QGIS
``sys.executable`` is the QGIS program itself):

1. ``python -m venv --without-pip --system-site-packages <env>.partial-<pid>``: a virtual
   environment that sees QGIS's own packages (numpy, GDAL, PyQt) and needs no ensurepip (which
   Debian ships apart, in python3-venv).  PEP 668 allows pip in a virtual environment.
2. pip itself: QGIS's Python's own pip when it has one (the venv sees it), else Debian's
   ``/usr/share/python-wheels/pip-*.whl``, else the pip wheel fetched from the package index
   (checked against the index's sha256).  A pip wheel runs as ``python pip.whl/pip``.
3. ``pip install torch torchvision`` from PyTorch's index for the chosen build (CPU or CUDA).
4. ``pip install timm rasterio scikit-learn`` from PyPI; torch is already there, so pip keeps it.

Both pip runs use a constraints file pinning numpy to the version QGIS already has: pip then
keeps QGIS's numpy (PyQGIS and GDAL are built against it; numpy 2 would break them) instead of
putting a second numpy first on ``sys.path``.  Everything happens in the ``.partial`` folder;
``finish`` renames it into place, so a failed or cancelled run leaves the old state.

Runnable as a script for the pip bootstrap step: ``python installer.py fetch-pip INDEX DEST``.
"""
import glob
import hashlib
import html.parser
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

if __package__:
    from . import paths
else:  # run as a script (pip bootstrap): only the standard library is needed then
    paths = None

PYPI_SIMPLE = "https://pypi.org/simple/"
# What SoilSSL needs; torchvision comes with torch from the same index (timm needs it).
TORCH_PACKAGES = ["torch>=2.1", "torchvision"]
# attrs: rasterio's affine 3 caches properties on slotted attrs classes, which needs attrs 23.2
# (Debian 12 has 22.2: every transform product fails with "No '__dict__' attribute").
OTHER_PACKAGES = ["timm>=1.0", "rasterio>=1.3", "scikit-learn>=1.3", "attrs>=23.2"]
RAW_PROGRESS_PIP = (24, 1)  # first pip with --progress-bar raw ("Progress N of M" lines)
DEBIAN_PIP_WHEELS = "/usr/share/python-wheels/pip-*.whl"


class DepsError(Exception):
    """Something that stops the installation, said for the user."""


# ----------------------------------------------------------------------------- the Python
def python_candidates(executable, base_executable, exec_prefix, version_info, platform,
                      which=shutil.which):
    """Interpreters that may be the Python QGIS runs, most likely first."""
    xy = f"{version_info[0]}.{version_info[1]}"
    found = [exe for exe in (executable, base_executable)
             if exe and re.fullmatch(r"python(\d+(\.\d+)?)?(\.exe)?",
                                     os.path.basename(exe).lower())]
    if platform.startswith("win"):  # OSGeo4W / standalone installer: apps\Python3X\python.exe
        found += [os.path.join(exec_prefix, "python.exe"), os.path.join(exec_prefix,
                                                                        "python3.exe")]
        found += [which("python"), which("python3")]
    else:  # Linux packages: /usr/bin/python3.X; QGIS.app: <exec_prefix>/bin/python3.X
        found += [os.path.join(exec_prefix, "bin", f"python{xy}"),
                  os.path.join(exec_prefix, "bin", "python3")]
        found += [which(f"python{xy}"), which("python3")]
    unique = []
    for exe in found:
        if exe and exe not in unique:
            unique.append(exe)
    return unique


def probe_python(exe, timeout=30):
    """'X.Y <base prefix>' of an interpreter, or None if it does not run."""
    if not os.path.isfile(exe):
        return None
    code = "import sys; print('%d.%d' % sys.version_info[:2], sys.base_prefix)"
    try:
        run = subprocess.run([exe, "-c", code],
                             capture_output=True, text=True, timeout=timeout, env=child_env(),
                             creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def find_python(candidates=None, version_info=None, probe=probe_python, base_prefix=None):
    """The interpreter of the Python installation QGIS runs: same version and same base
    prefix (a pyenv or conda python3.X first on PATH has other site-packages: a virtual
    environment of it would not see QGIS's packages)."""
    version_info = version_info or sys.version_info
    base_prefix = base_prefix or sys.base_prefix
    if candidates is None:
        candidates = python_candidates(sys.executable, getattr(sys, "_base_executable", None),
                                       sys.exec_prefix, version_info, sys.platform)
    want = f"{version_info[0]}.{version_info[1]}"
    for exe in candidates:
        answer = (probe(exe) or "").split(" ", 1)
        if answer[0] == want and len(answer) == 2 and _same_path(answer[1], base_prefix):
            return exe
    raise DepsError(f"Cannot find the Python {want} interpreter that QGIS runs (from "
                    f"{base_prefix}; tried: {', '.join(candidates) or 'nothing'}). Install the "
                    "packages by hand: see 'Installing the deep-learning packages' in the "
                    "SoilSSL README.")


def _same_path(a, b):
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def child_env(base=None):
    """The environment for the Python and pip we start: nothing that redirects installs."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_TARGET",
                 "PIP_PREFIX", "PIP_USER", "PIP_ROOT", "PIP_REQUIRE_VIRTUALENV",
                 "PIP_BREAK_SYSTEM_PACKAGES"):
        env.pop(name, None)
    env.update(PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
               PIP_NO_INPUT="1")
    return env


def host_version(name):
    """The version of a distribution QGIS's Python has, not counting SoilSSL's folders."""
    if name in sys.modules and getattr(sys.modules[name], "__version__", None):
        return sys.modules[name].__version__
    search = [p for p in sys.path if "soilssl-deps" not in p]
    for dist in importlib.metadata.distributions(path=search):
        if (dist.metadata["Name"] or "").lower() == name.lower():
            return dist.version
    return None


# ----------------------------------------------------------------------------- pip
def pip_version_of(text):
    m = re.search(r"pip[- ](\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def system_pip(python):
    """(version, how) of the pip QGIS's Python can run, or None: how is ['-m', 'pip'] or
    [path to a pip wheel + '/pip']."""
    try:
        run = subprocess.run([python, "-m", "pip", "--version"], capture_output=True,
                             text=True, timeout=60, env=child_env(),
                             creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        if run.returncode == 0 and pip_version_of(run.stdout):
            return pip_version_of(run.stdout), ["-m", "pip"]
    except (OSError, subprocess.SubprocessError):
        pass
    wheels = sorted(glob.glob(DEBIAN_PIP_WHEELS), key=lambda w: pip_version_of(
        os.path.basename(w)) or (0, 0))
    if wheels:
        return pip_version_of(os.path.basename(wheels[-1])), [wheels[-1] + "/pip"]
    return None


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs).get("href", ""))


def fetch_pip(index_url, dest_dir, timeout=120):
    """Download the newest pip wheel from a PEP 503 index into dest_dir; its path.
    The index's sha256 (the link's #sha256=) is checked before the file is kept."""
    page_url = index_url.rstrip("/") + "/pip/"
    with urllib.request.urlopen(page_url, timeout=timeout) as r:
        parser = _Links()
        parser.feed(r.read().decode("utf-8", "replace"))
    wheels = []
    for href in parser.links:
        url = urllib.parse.urljoin(page_url, href)
        name = urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(url).path))
        version = re.fullmatch(r"pip-(\d+)\.(\d+)(?:\.(\d+))?-py3-none-any\.whl", name)
        if version:
            wheels.append((tuple(int(v or 0) for v in version.groups()), name, url))
    if not wheels:
        raise DepsError(f"No pip wheel at {page_url}")
    _, name, url = max(wheels)
    sha = urllib.parse.urlparse(url).fragment
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, name)
    with urllib.request.urlopen(url.split("#")[0], timeout=timeout) as r:
        data = r.read()
    if sha.startswith("sha256=") and hashlib.sha256(data).hexdigest() != sha[len("sha256="):]:
        raise DepsError(f"{name}: sha256 differs from the index's; not used.")
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return path


# ----------------------------------------------------------------------------- the plan
@dataclass
class Step:
    title: str
    argv: object        # a list, or a callable returning it (known once earlier steps ran)
    weight: float       # share of the whole progress bar
    expected_mb: float = 0.0   # what pip will likely download (for the progress bar)

    def command(self):
        return self.argv() if callable(self.argv) else list(self.argv)


@dataclass
class Plan:
    python: str
    build: object       # torch_build.TorchBuild
    final: str          # the environment's folder once done
    tmp: str            # where it is built
    steps: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)

    def describe(self):
        """The plan in words and commands (for the dialog and for doing it by hand)."""
        lines = [f"Python: {self.python}", f"Folder: {self.final}",
                 f"torch: {self.build.label} ({self.build.reason})"]
        lines += [f"Keeps QGIS's {k} {v}" for k, v in self.constraints.items()]
        return "\n".join(lines)

    def discard(self):
        """Remove what an unfinished run built (cancel, failure)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        return not os.path.exists(self.tmp)

    def finish(self):
        """Move the finished environment into place (the old one, if any, is replaced)."""
        site = paths.site_packages(self.tmp)
        installed = sorted(_installed(site).items())
        manifest = {"python": self.python, "torch_build": self.build.tag,
                    "torch_index": self.build.index_url, "reason": self.build.reason,
                    "constraints": self.constraints, "installed": dict(installed),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(os.path.join(self.tmp, paths.MANIFEST + ".tmp"), "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(os.path.join(self.tmp, paths.MANIFEST + ".tmp"),
                   os.path.join(self.tmp, paths.MANIFEST))
        old = None
        if os.path.exists(self.final):
            old = f"{self.final}.old-{os.getpid()}-{int(time.time())}"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old:  # on Windows a DLL still loaded by QGIS stays until the next install
            shutil.rmtree(old, ignore_errors=True)
        return manifest


def _installed(site):
    out = {}
    for d in glob.glob(os.path.join(site, "*.dist-info")):
        m = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", os.path.basename(d))
        if m:
            out[m.group(1)] = m.group(2)
    return out


def cleanup(root):
    """Remove what an interrupted run left (QGIS killed while installing)."""
    removed = []
    for d in glob.glob(os.path.join(glob.escape(root), "*.partial-*")) + \
            glob.glob(os.path.join(glob.escape(root), "*.old-*")):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def make_plan(build, python=None, root=None, index_url=None, torch_packages=None,
              other_packages=None, pip=None, bootstrap_index=PYPI_SIMPLE):
    """The steps that install SoilSSL's packages for ``build`` (a TorchBuild) into
    ``root``/python<X.Y>.  ``index_url`` replaces PyPI for the non-torch packages and
    ``build.index_url`` is torch's index (tests use local ones); ``pip`` is
    ``system_pip(python)``'s answer (found when not given)."""
    python = python or find_python()
    root = root or paths.deps_root()
    final = paths.env_dir(root)
    tmp = f"{final}.partial-{os.getpid()}"
    plan = Plan(python, build, final, tmp)
    numpy = host_version("numpy")
    if numpy:
        plan.constraints["numpy"] = numpy
    constraints_file = os.path.join(root, "constraints.txt")
    venv_python = paths.env_python(tmp)
    pip = system_pip(python) if pip is None else pip
    torch_mb = 250 if build.tag in ("cpu", "pypi") else 3000
    plan.steps.append(Step("Creating SoilSSL's Python environment", [
        python, "-m", "venv", "--without-pip", "--system-site-packages", tmp], 0.02))
    wheel_dir = os.path.join(root, "pip")
    if not pip:
        plan.steps.append(Step("Downloading pip", [
            python, os.path.abspath(__file__), "fetch-pip", bootstrap_index, wheel_dir], 0.03))

    def pip_install(index, packages):
        def argv():
            version, how = pip or _fetched_pip(wheel_dir)
            raw = version is not None and version >= RAW_PROGRESS_PIP
            cmd = [venv_python] + how + [
                "install", "--disable-pip-version-check", "--no-input", "--no-color",
                "--no-warn-script-location", "--progress-bar", "raw" if raw else "off",
                "--constraint", constraints_file]
            return cmd + (["--index-url", index] if index else []) + list(packages)
        return argv

    plan.steps.append(Step(f"Installing torch ({build.label})", pip_install(
        build.index_url, torch_packages or TORCH_PACKAGES), 0.7, torch_mb))
    plan.steps.append(Step("Installing timm, rasterio and scikit-learn", pip_install(
        index_url, other_packages or OTHER_PACKAGES), 0.25, 100))
    os.makedirs(root, exist_ok=True)
    text = "# Written by SoilSSL: keep QGIS's own numpy (PyQGIS and GDAL are built for it)\n"
    text += "".join(f"{k}=={v}\n" for k, v in plan.constraints.items())
    with open(constraints_file + ".tmp", "w") as f:
        f.write(text)
    os.replace(constraints_file + ".tmp", constraints_file)
    return plan


def _fetched_pip(wheel_dir):
    wheels = sorted(glob.glob(os.path.join(glob.escape(wheel_dir), "pip-*.whl")),
                    key=lambda w: pip_version_of(os.path.basename(w)) or (0, 0))
    if not wheels:
        raise DepsError("pip could not be downloaded.")
    return pip_version_of(os.path.basename(wheels[-1])), [wheels[-1] + "/pip"]


# ----------------------------------------------------------------------------- progress
_UNITS = {"bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9}


class PipProgress:
    """Reads pip's output line by line: a fraction (0-1, never going back) and a status."""

    def __init__(self, expected_mb=0.0):
        self.expected = expected_mb * 1e6
        self.done = 0.0          # bytes of finished downloads
        self.current = 0.0       # size of the download under way
        self.current_done = 0.0
        self.fraction = 0.0
        self.status = ""
        self.errors = []

    def feed(self, line):
        line = line.strip()
        if not line:
            return
        m = re.match(r"(Downloading|Using cached) (\S+)(?: \(([\d.]+)\s*(bytes|[kKMG]B)\))?",
                     line)
        if m:
            self.done += self.current
            size = float(m.group(3)) * _UNITS[m.group(4).lower()] if m.group(3) else 0.0
            name = urllib.parse.unquote(os.path.basename(m.group(2).split("#")[0]))
            self.current, self.current_done = (size, 0.0) if m.group(1) == "Downloading" \
                else (0.0, 0.0)
            if m.group(1) != "Downloading":
                self.done += size
            self.status = f"{m.group(1)} {name}" + (f" ({m.group(3)} {m.group(4)})"
                                                     if m.group(3) else "")
            self._download_fraction()
            return
        m = re.search(r"Progress (\d+) of (\d+|\?)", line)
        if m:
            self.current_done = float(m.group(1))
            if m.group(2) != "?":
                self.current = max(self.current, float(m.group(2)))
            self._download_fraction()
            return
        m = re.match(r"Collecting (\S+)", line)
        if m:
            self.status = f"Resolving {m.group(1)}"
            self._set(0.03)
        elif line.startswith("Installing collected packages"):
            self.done += self.current
            self.current = self.current_done = 0.0
            self.status = "Installing " + line.split(":", 1)[-1].strip()
            self._set(0.9)
        elif line.startswith("Successfully installed"):
            self.status = line
            self._set(1.0)
        elif line.startswith("ERROR:") or line.startswith("error:"):
            self.errors.append(line)

    def _download_fraction(self):
        got = self.done + min(self.current_done, self.current or self.current_done)
        total = max(self.expected, self.done + self.current, 1.0)
        self._set(0.05 + 0.8 * min(1.0, got / total))

    def _set(self, fraction):
        self.fraction = max(self.fraction, min(1.0, fraction))


if __name__ == "__main__":  # python installer.py fetch-pip INDEX DEST
    if len(sys.argv) != 4 or sys.argv[1] != "fetch-pip":
        sys.exit("usage: installer.py fetch-pip INDEX_URL DEST_DIR")
    try:
        print("Downloaded", fetch_pip(sys.argv[2], sys.argv[3]))
    except (OSError, DepsError) as exc:
        sys.exit(f"ERROR: cannot download pip from {sys.argv[2]}: {exc}")
