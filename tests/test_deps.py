"""The dependency manager: torch build choice, the Python to run, pip's progress, a real
install (tiny wheels built here, served by a local index on 127.0.0.1), cancel, sys.path at
plugin start, the hints and links in the algorithm dialogs, the menu, and the dialogs as seen
(screenshots in build/screenshots/).  The real torch is never installed."""
import base64
import hashlib
import http.server
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from conftest import ROOT

SHOTS = os.path.join(ROOT, "build", "screenshots")

SMI_550 = """Wed Nov 25 21:40:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 3060        Off |   00000000:01:00.0  On |                  N/A |
|  0%   45C    P8             13W /  170W |     512MiB /  12288MiB |      2%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_470 = """+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.82.01    Driver Version: 470.82.01    CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
|===============================+======================+======================|
|   0  Tesla T4            Off  | 00000000:00:04.0 Off |                    0 |
+-------------------------------+----------------------+----------------------+
"""
SMI_580_WINDOWS = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 581.15                 Driver Version: 581.15         CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                  Driver-Model | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 4070 ...  WDDM  |   00000000:01:00.0  On |                  N/A |
|   1  NVIDIA RTX A4000             TCC   |   00000000:02:00.0 Off |                  Off |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_H100_126 = SMI_550.replace("550.54.15 ", "560.35.03 ").replace("CUDA Version: 12.4",
                                                                   "CUDA Version: 12.6") \
    .replace("NVIDIA GeForce RTX 3060       ", "NVIDIA H100 80GB HBM3         ")
SMI_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                 "Make sure that the latest NVIDIA driver is installed and running.\n")


# ----------------------------------------------------------------------------- torch build
@pytest.mark.parametrize("output, platform, tag, gpu", [
    (None, "linux", "cpu", ""),
    ("", "win32", "cpu", ""),
    (SMI_NO_DRIVER, "linux", "cpu", ""),
    (SMI_550, "linux", "cu124", "NVIDIA GeForce RTX 3060"),
    (SMI_H100_126, "linux", "cu126", "NVIDIA H100 80GB HBM3"),
    (SMI_470, "linux", "cpu", "Tesla T4"),  # CUDA 11.4 < 11.8: no CUDA build of torch runs
    (SMI_580_WINDOWS, "win32", "cu130", "NVIDIA GeForce RTX 4070 ..., NVIDIA RTX A4000"),
    (SMI_550, "darwin", "pypi", ""),
])
def test_torch_build_from_nvidia_smi(output, platform, tag, gpu):
    from soilssl.deps.torch_build import PYTORCH_INDEX, choose
    build = choose(output, platform)
    assert build.tag == tag and build.gpu == gpu
    assert build.index_url == ("" if tag == "pypi" else PYTORCH_INDEX + tag)
    assert build.reason.endswith(".")
    if tag.startswith("cu"):
        assert f"CUDA {tag[2:-1]}.{tag[-1]} build" in build.label


def test_torch_build_cuda_between_builds_and_old_smi_without_cuda_line():
    from soilssl.deps.torch_build import choose, cuda_of_driver, parse_nvidia_smi
    # CUDA 12.5 driver: the 12.4 build (12.6 needs a newer driver)
    assert choose(SMI_550.replace("CUDA Version: 12.4", "CUDA Version: 12.5"), "linux").tag \
        == "cu124"
    assert choose(SMI_550.replace("CUDA Version: 12.4", "CUDA Version: 12.10"), "linux").tag \
        == "cu129"
    # an nvidia-smi that prints no CUDA version: the driver number decides (Linux table)
    no_cuda = SMI_550.replace("CUDA Version: 12.4", "")
    assert parse_nvidia_smi(no_cuda)[:2] == ((550, 54, 15), None)
    assert choose(no_cuda, "linux").tag == "cu124"
    assert cuda_of_driver((535, 104, 5)) == (12, 2) and cuda_of_driver((450, 80, 2)) is None
    assert choose(no_cuda.replace("550.54.15", "450.80.02"), "linux").tag == "cpu"
    assert choose(no_cuda, "win32").tag == "cpu"  # no table for Windows driver numbers


# ----------------------------------------------------------------------------- the Python
def test_python_candidates_inside_qgis_on_each_platform():
    from soilssl.deps.installer import find_python, python_candidates
    which = {"python3.11": "/usr/bin/python3.11", "python3": "/usr/bin/python3",
             "python": r"C:\OSGeo4W\bin\python.exe"}.get
    linux = python_candidates("/usr/bin/qgis", "/usr/bin/qgis", "/usr", (3, 11), "linux", which)
    assert linux == ["/usr/bin/python3.11", "/usr/bin/python3"]  # never the qgis program
    win = python_candidates(r"C:\OSGeo4W\bin\qgis-ltr-bin.exe", None,
                            r"C:\OSGeo4W\apps\Python39", (3, 9), "win32", which)
    assert win[0] == os.path.join(r"C:\OSGeo4W\apps\Python39", "python.exe")
    mac = python_candidates("/Applications/QGIS.app/Contents/MacOS/QGIS", None,
                            "/Applications/QGIS.app/Contents/Frameworks/Python.framework/"
                            "Versions/3.9", (3, 9), "darwin", lambda name: None)
    assert mac[0].endswith("Versions/3.9/bin/python3.9")
    venv = python_candidates("/x/.venv/bin/python", "/usr/bin/python3.11", "/x/.venv",
                             (3, 11), "linux", which)
    assert venv[:2] == ["/x/.venv/bin/python", "/usr/bin/python3.11"]
    # the first candidate of QGIS's own Python installation wins: same version, same prefix
    # (not a pyenv python3.11 that comes first on PATH: its site-packages differ)
    answers = {"/usr/bin/python3.11": "3.11 /usr", "/usr/bin/python3": "3.11 /usr",
               "/root/.pyenv/shims/python3.11": "3.11 /root/.pyenv/versions/3.11.7",
               "/usr/local/bin/python3": "3.13 /usr"}
    assert find_python(["/nope", "/root/.pyenv/shims/python3.11", "/usr/local/bin/python3",
                        "/usr/bin/python3.11"], (3, 11), answers.get, "/usr") == \
        "/usr/bin/python3.11"
    from soilssl.deps.installer import DepsError
    with pytest.raises(DepsError, match="Cannot find the Python 3.11 interpreter that QGIS runs "
                                        r"\(from /usr; tried: .*README"):
        find_python(["/usr/local/bin/python3", "/root/.pyenv/shims/python3.11"], (3, 11),
                    answers.get, "/usr")


def test_find_python_on_this_machine_as_qgis_sees_it():
    from soilssl.deps.installer import find_python, probe_python, python_candidates
    cands = python_candidates("/usr/bin/qgis", "/usr/bin/qgis", sys.base_exec_prefix,
                              sys.version_info, sys.platform)
    exe = find_python(cands, sys.version_info)
    assert probe_python(exe) == "%d.%d %s" % (*sys.version_info[:2], sys.base_prefix)
    assert os.path.basename(exe).startswith("python")


# ----------------------------------------------------------------------------- progress
PIP_23_OUTPUT = """Looking in indexes: https://download.pytorch.org/whl/cpu
Collecting torch>=2.1
  Downloading https://download.pytorch.org/whl/cpu/torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl (174.7 MB)
Collecting filelock
  Using cached filelock-3.13.1-py3-none-any.whl (11 kB)
Collecting sympy
  Downloading sympy-1.13.1-py3-none-any.whl (6.2 MB)
Installing collected packages: sympy, filelock, torch
Successfully installed filelock-3.13.1 sympy-1.13.1 torch-2.5.1+cpu
"""


def test_pip_progress_from_pip_output_monotonic():
    from soilssl.deps.installer import PipProgress
    p = PipProgress(expected_mb=250)
    seen = []
    for line in PIP_23_OUTPUT.splitlines():
        p.feed(line)
        seen.append((round(p.fraction, 3), p.status))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[2][1] == "Downloading torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl (174.7 MB)"
    assert seen[-2][1] == "Installing sympy, filelock, torch" and seen[-2][0] == 0.9
    # torch (174.7 MB) done when sympy starts: 0.05 + 0.8 * 174.7/250
    assert seen[6][0] == pytest.approx(0.05 + 0.8 * 174.7 / 250, abs=1e-3)
    # pip >= 24.1 --progress-bar raw: byte counts move the bar within a download
    raw = PipProgress(expected_mb=100)
    raw.feed("Collecting timm")
    raw.feed("  Downloading timm-1.0.31-py3-none-any.whl (50.0 MB)")
    raw.feed("Progress 25000000 of 50000000")
    assert raw.fraction == pytest.approx(0.05 + 0.8 * 0.25)
    raw.feed("Progress 50000000 of 50000000 bytes")
    assert raw.fraction == pytest.approx(0.05 + 0.8 * 0.5)
    raw.feed("ERROR: No matching distribution found for nothing")
    assert raw.errors == ["ERROR: No matching distribution found for nothing"]


# ----------------------------------------------------------------------------- local index
def make_wheel(folder, name, version, requires=(), code=None):
    """A minimal, valid pure-Python wheel (RECORD with sha256s), as pip builds them."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": code or f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                      + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: soilssl-tests\n"
                                   "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record += f"{path},sha256={digest.decode()},{len(text.encode())}\n"
    files[f"{dist}.dist-info/RECORD"] = record + f"{dist}.dist-info/RECORD,,\n"
    project = os.path.join(folder, name.lower().replace("_", "-"))
    os.makedirs(project, exist_ok=True)
    path = os.path.join(project, f"{dist}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


class Index:
    """A folder served on 127.0.0.1 (http.server's listings are a PEP 503 simple index).
    Requests under /slow/ wait until released (to cancel a pip that is downloading)."""

    def __init__(self, folder):
        self.folder, self.release, self.requests = folder, threading.Event(), []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=folder, **k)

            def do_GET(self):  # noqa: N802
                index.requests.append(self.path)
                if self.path.startswith("/slow/"):
                    index.release.wait(60)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Two indexes: torchidx (torch's) and pypi, with tiny wheels; pip sees no other index
    (this machine's pip configuration is switched off) and no proxy for 127.0.0.1."""
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "index"
    make_wheel(root / "torchidx", "soilssl-probe-torch", "1.0")
    # "timm" needs "torch" (only on torch's index) and numpy (on no index: QGIS's must do)
    make_wheel(root / "pypi", "soilssl-probe-timm", "2.0",
               requires=["soilssl-probe-torch>=1.0", "numpy"],
               code="import soilssl_probe_torch\nVERSION = '2.0'\n")
    shutil.copytree(root / "pypi", root / "slow")
    index = Index(str(root))
    yield index
    index.close()


def run_dialog(qgis_app, dialog, until=("done", "failed", "cancelled"), timeout=180,
               condition=None):
    from qgis.PyQt.QtCore import QCoreApplication
    start = time.time()
    while time.time() - start < timeout:
        QCoreApplication.processEvents()
        if (condition and condition()) or (not condition and dialog.state in until):
            return
        time.sleep(0.02)
    raise AssertionError(f"dialog still {dialog.state}: {dialog.details.toPlainText()}")


def probe_dialog(qgis_app, index, profile, index_dir="pypi"):
    from soilssl.deps.dialogs import InstallDialog
    from soilssl.deps.torch_build import TorchBuild
    build = TorchBuild("cpu", index.url + "torchidx/", "test index")
    return InstallDialog(missing=["torch", "timm"], build=build, options=dict(
        root=str(profile), index_url=index.url + index_dir + "/",
        torch_packages=["soilssl-probe-torch"], other_packages=["soilssl-probe-timm"]))


def test_install_into_profile_folder_then_importable_and_cancel_leaves_nothing(
        qgis_app, local_index, tmp_path):
    from soilssl.deps import paths
    profile = tmp_path / "profile" / "python" / "soilssl-deps"
    dialog = probe_dialog(qgis_app, local_index, profile)
    assert dialog.final == str(profile / paths.python_tag())
    dialog.start()
    run_dialog(qgis_app, dialog)
    log = dialog.details.toPlainText()
    assert dialog.state == "done", log
    assert dialog.progress.value() == 1000 and dialog.status.text().startswith("Done:")
    # the commands: a venv of QGIS's Python seeing QGIS's packages, pip from each index
    assert "-m venv --without-pip --system-site-packages" in log
    assert f"--index-url {local_index.url}torchidx/ soilssl-probe-torch" in log
    assert f"--index-url {local_index.url}pypi/ soilssl-probe-timm" in log
    assert (profile / "constraints.txt").read_text().splitlines()[1] == \
        "numpy==" + importlib.import_module("numpy").__version__
    env = profile / paths.python_tag()
    site = paths.site_packages(str(env))
    installed = sorted(os.listdir(site))
    assert "soilssl_probe_torch" in installed and "soilssl_probe_timm" in installed
    assert not [n for n in installed if n.startswith("numpy")]  # QGIS's numpy is kept
    assert sorted(os.listdir(profile)) == ["constraints.txt", paths.python_tag()]
    assert (env / paths.MANIFEST).is_file()
    # plugin start: the folder goes first on sys.path and the packages import
    saved = list(sys.path)
    try:
        folder, message = paths.activate(str(env))
        assert folder == site and sys.path[0] == site
        assert message.startswith(f"SoilSSL dependencies: using {site}")
        assert paths.is_active(str(env))
        assert paths.activate(str(env))[0] == site and sys.path.count(site) == 1
        probe = importlib.import_module("soilssl_probe_timm")
        assert probe.VERSION == "2.0" and probe.__file__.startswith(site)
    finally:
        sys.path[:] = saved
        for name in ("soilssl_probe_timm", "soilssl_probe_torch"):
            sys.modules.pop(name, None)
    os.makedirs(SHOTS, exist_ok=True)
    dialog.show()
    dialog.grab().save(os.path.join(SHOTS, "install_dependencies_done.png"))

    # install again, from an index that hangs: Cancel kills pip, removes the half-built
    # folder, and the installed environment stays as it was
    before = sorted(os.listdir(site))
    again = probe_dialog(qgis_app, local_index, profile, index_dir="slow")
    again.start()
    run_dialog(qgis_app, again, condition=lambda: any(
        r.startswith("/slow/soilssl-probe-timm/") for r in local_index.requests))
    pid = again.process.processId()
    partial = again.plan.tmp
    assert os.path.isdir(partial) and again.state == "running"
    again.show()
    again.grab().save(os.path.join(SHOTS, "install_dependencies_running.png"))
    again.cancel_button.click()
    assert again.state == "cancelled" and again.status.text() == \
        "Cancelled: nothing was installed."
    assert not os.path.exists(partial) and again.process is None
    with pytest.raises(ProcessLookupError):  # pip is gone (killed and reaped)
        os.kill(pid, 0)
    assert sorted(os.listdir(profile)) == ["constraints.txt", paths.python_tag()]
    assert sorted(os.listdir(site)) == before
    again.close()
    dialog.close()


def test_failed_install_says_why_and_leaves_nothing(qgis_app, local_index, tmp_path):
    from soilssl.deps.dialogs import InstallDialog
    from soilssl.deps.torch_build import TorchBuild
    profile = tmp_path / "deps"
    dialog = InstallDialog(build=TorchBuild("cpu", local_index.url + "torchidx/", "test"),
                           options=dict(root=str(profile), index_url=local_index.url + "pypi/",
                                        torch_packages=["soilssl-probe-nothing"]))
    dialog.start()
    run_dialog(qgis_app, dialog)
    assert dialog.state == "failed"
    text = dialog.status.text()
    assert text.startswith("Not installed: Installing torch (CPU build) failed (exit code 1).")
    assert "soilssl-probe-nothing" in text and "Nothing was changed" in text
    assert os.listdir(profile) == ["constraints.txt"]
    dialog.close()


def test_pip_bootstrap_from_an_index_checks_sha256(tmp_path):
    """QGIS's Python on Debian has no pip: the pip wheel is fetched from the index."""
    from soilssl.deps.installer import DepsError, fetch_pip
    wheels = sorted(__import__("glob").glob("/usr/share/python-wheels/pip-*.whl"))
    if not wheels:
        pytest.skip("no pip wheel on this machine to serve")
    folder = tmp_path / "index" / "pip"
    folder.mkdir(parents=True)
    shutil.copy(wheels[-1], folder)
    name = os.path.basename(wheels[-1])
    sha = hashlib.sha256(open(wheels[-1], "rb").read()).hexdigest()
    (folder / "index.html").write_text(f'<a href="{name}#sha256={sha}">{name}</a>'
                                       '<a href="pip-1.0.tar.gz">old</a>')
    index = Index(str(tmp_path / "index"))
    try:
        path = fetch_pip(index.url, str(tmp_path / "out"))
        assert os.path.basename(path) == name
        run = subprocess.run([sys.executable, path + "/pip", "--version"], capture_output=True,
                             text=True)
        assert run.returncode == 0 and run.stdout.startswith("pip ")
        (folder / "index.html").write_text(f'<a href="{name}#sha256={"0" * 64}">{name}</a>')
        with pytest.raises(DepsError, match="sha256 differs"):
            fetch_pip(index.url, str(tmp_path / "bad"))
        assert not (tmp_path / "bad" / name).exists()
    finally:
        index.close()


def test_plan_without_pip_fetches_it_first(tmp_path):
    from soilssl.deps.installer import make_plan
    from soilssl.deps.torch_build import choose
    plan = make_plan(choose(SMI_550, "linux"), python=sys.executable, root=str(tmp_path),
                     pip=False, bootstrap_index="http://127.0.0.1:1/simple/")
    titles = [s.title for s in plan.steps]
    assert titles == ["Creating SoilSSL's Python environment", "Downloading pip",
                      "Installing torch (CUDA 12.4 build)",
                      "Installing timm, rasterio and scikit-learn"]
    assert plan.steps[1].command()[2:] == ["fetch-pip", "http://127.0.0.1:1/simple/",
                                           str(tmp_path / "pip")]
    from soilssl.deps.installer import DepsError
    with pytest.raises(DepsError, match="pip could not be downloaded"):
        plan.steps[2].command()
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / "pip-25.3-py3-none-any.whl").write_bytes(b"")
    torch_cmd = plan.steps[2].command()
    assert torch_cmd[1:3] == [str(tmp_path / "pip" / "pip-25.3-py3-none-any.whl") + "/pip",
                              "install"]
    assert "raw" in torch_cmd  # pip >= 24.1 reports bytes
    assert torch_cmd[-4:] == ["--index-url", "https://download.pytorch.org/whl/cu124",
                              "torch>=2.1", "torchvision"]
    others = plan.steps[3].command()
    assert "--index-url" not in others and others[-4:] == ["timm>=1.0", "rasterio>=1.3",
                                                           "scikit-learn>=1.3", "attrs>=23.2"]


# ----------------------------------------------------------------------------- sys.path
def test_activate_adds_folder_first_with_pth_and_says_what_was_imported_before(tmp_path,
                                                                                 monkeypatch):
    from soilssl.deps import paths
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "deps"))
    assert paths.activate() == (None, f"SoilSSL dependencies: none installed in "
                                      f"{tmp_path / 'deps' / paths.python_tag()}")
    site = paths.site_packages(paths.env_dir())
    os.makedirs(os.path.join(site, "extra"))
    with open(os.path.join(site, "extra.pth"), "w") as f:
        f.write("extra\n")
    for name in ("torch", "numpy", "soilssl_not_imported", "triton"):  # as pip leaves them
        os.makedirs(os.path.join(site, name))
    os.makedirs(os.path.join(site, "torch-2.14.1.dist-info"))
    monkeypatch.setitem(sys.modules, "triton", None)  # blocked, not imported
    saved = list(sys.path)
    try:
        import torch  # noqa: F401  (as if another plugin imported it first)
        folder, message = paths.activate()
        assert sys.path[:2] == [site, os.path.join(site, "extra")]
        assert paths.imported_elsewhere(site) == ["numpy", "torch"]
        assert message.endswith("(numpy, torch already imported by QGIS or another plugin from "
                                "elsewhere: that copy stays in use until QGIS restarts)")
    finally:
        sys.path[:] = saved


def test_plugin_start_activates_before_torch_in_a_fresh_python(tmp_path):
    """classFactory puts the folder on sys.path; torch is not imported by it."""
    from soilssl.deps import paths
    env = tmp_path / "deps" / paths.python_tag()
    site = paths.site_packages(str(env))
    os.makedirs(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import soilssl; "
            "soilssl.classFactory(None); print(sys.path.index(sys.argv[2]) < "
            "sys.path.index(sys.argv[1]), 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, ".build", "plugins"),
                          site], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, SOILSSL_DEPS_DIR=str(tmp_path / "deps"),
                                  QT_QPA_PLATFORM="offscreen"))
    assert run.stdout.split() == ["True", "False"], run.stderr


# ----------------------------------------------------------------------------- hints, links
@pytest.fixture
def sklearn_missing(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("sklearn", "timm") else real(name, *a))


def test_provider_warning_is_one_plain_line_that_fits_the_dialog_bar(qgis_app,
                                                                      sklearn_missing,
                                                                      monkeypatch):
    """The provider warning goes to the run log (QGIS 3.22) and, from QGIS 3.24 on, to the
    algorithm dialog's message bar, which shows one line: all of it must fit there."""
    import processing
    from processing.tools import general
    from qgis.core import Qgis
    from qgis.PyQt.QtCore import QCoreApplication
    from qgis.PyQt.QtWidgets import QTextBrowser

    class Iface:
        def mainWindow(self):  # noqa: N802
            return None

    monkeypatch.setattr(general, "iface", Iface())
    monkeypatch.setattr("qgis.utils.iface", Iface())  # the desktop
    provider = qgis_app.processingRegistry().providerById("soilssl")
    warning = provider.warningMessage()
    assert warning == "Missing packages: Plugins → SoilSSL → Install dependencies…"
    dlg = processing.createAlgorithmDialog("soilssl:clustermap")
    try:
        dlg.messageBar().pushMessage(warning, Qgis.Warning)  # as QGIS >= 3.24 does on opening
        dlg.show()
        QCoreApplication.processEvents()
        browser = dlg.messageBar().currentItem().findChild(QTextBrowser)
        assert browser.toPlainText() == warning
        assert browser.verticalScrollBar().maximum() == 0  # nothing below the visible line
        assert browser.document().idealWidth() <= browser.viewport().width()
        os.makedirs(SHOTS, exist_ok=True)
        dlg.grab().save(os.path.join(SHOTS, "algorithm_dialog_missing_packages.png"))
    finally:
        dlg.close()


def test_cannot_run_message_links_to_the_installer(qgis_app, sklearn_missing, monkeypatch):
    from processing.gui.MessageDialog import MessageDialog
    from qgis.PyQt.QtCore import QUrl
    from soilssl.algorithms.base import INSTALL_URL
    from soilssl.deps.dialogs import Links

    class Iface:
        pass

    monkeypatch.setattr("qgis.utils.iface", Iface())
    alg = qgis_app.processingRegistry().algorithmById("soilssl:clustermap")
    ok, message = alg.canExecute()
    assert not ok
    dlg = MessageDialog()  # what the Toolbox shows when canExecute() is False
    dlg.setMessage(f"<h3>This algorithm cannot be run :-( </h3>\n{message}")
    text = dlg.txtMessage.toPlainText()
    assert ("SoilSSL needs these Python packages, which QGIS's Python does not have: timm, "
            "scikit-learn. Install them with Plugins → SoilSSL → Install dependencies…, or by "
            "hand as 'Installing the deep-learning packages' in the SoilSSL README shows.") in text
    assert f'href="{INSTALL_URL}"' in dlg.txtMessage.toHtml()
    opened = []
    links = Links({"install-dependencies": lambda: opened.append("install")})
    try:
        dlg.openLink(QUrl(INSTALL_URL))  # the link's click: QDesktopServices -> the plugin
        dlg.openLink(QUrl("soilssl:unknown"))
    finally:
        links.remove()
    assert opened == ["install"]
    # no desktop (qgis_process, scripts): plain text, no HTML
    monkeypatch.setattr("qgis.utils.iface", None)
    assert "<a" not in alg.canExecute()[1]
    assert "Plugins → SoilSSL → Install dependencies…" in alg.canExecute()[1]


# ----------------------------------------------------------------------------- menu, diagnostics
def test_plugin_menu_has_install_and_diagnostics(qgis_app, monkeypatch):
    from qgis.PyQt.QtWidgets import QMainWindow
    import soilssl
    from soilssl.deps import dialogs

    class Iface:
        def __init__(self):
            self.window, self.menu = QMainWindow(), []

        def mainWindow(self):  # noqa: N802
            return self.window

        def addPluginToMenu(self, menu, action):  # noqa: N802
            self.menu.append((menu, action.text()))

        def removePluginMenu(self, menu, action):  # noqa: N802
            self.menu.remove((menu, action.text()))

    shown = []
    monkeypatch.setattr(dialogs.DiagnosticsDialog, "exec_", lambda self: shown.append(
        self.text.toPlainText()))
    monkeypatch.setattr(dialogs.diagnostics, "report", lambda qgis: f"SoilSSL diagnostics {qgis}")
    iface = Iface()
    plugin = soilssl.classFactory(iface)
    plugin.initProcessing = lambda: None  # the session's plugin has the provider already
    plugin.initGui()
    try:
        assert iface.menu == [("&SoilSSL", "Install dependencies…"), ("&SoilSSL",
                                                                      "Diagnostics…")]
        plugin.actions[1].trigger()
        assert shown and shown[0].startswith("SoilSSL diagnostics")
    finally:
        plugin.unload()
    assert iface.menu == [] and plugin.links is None


def test_diagnostics_dialog_lists_versions_build_device_paths_and_copies(qgis_app, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("SOILSSL_DEPS_DIR", str(tmp_path / "deps"))
    import numpy
    import torch
    from qgis.core import Qgis
    from qgis.PyQt.QtGui import QGuiApplication
    from qgis.core import QgsApplication
    from soilssl.deps.dialogs import DiagnosticsDialog, diagnostics_text
    logged = []
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: logged.append((tag, message)))
    text = diagnostics_text()
    assert ("SoilSSL", text) in logged  # also in View → Panels → Log Messages
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines()[1:])
    assert rows["QGIS"] == Qgis.QGIS_VERSION
    assert rows["torch"].startswith(torch.__version__ + "  (")
    assert rows["numpy"].startswith(numpy.__version__)
    for key in ("timm", "rasterio", "scikit-learn", "GDAL", "sys.executable", "site-packages"):
        assert key in rows, key
    assert rows["torch build"] == (f"CUDA {torch.version.cuda}" if torch.version.cuda
                                   else "CPU only")
    assert rows["CUDA device"].startswith(torch.cuda.get_device_name(0) if torch.cuda.is_available()
                             else "none")
    assert rows["deps folder"].endswith("(nothing installed)")
    assert rows["Python for pip"].startswith("/") and rows["sys.executable"] == sys.executable
    dialog = DiagnosticsDialog(text)
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == text
    os.makedirs(SHOTS, exist_ok=True)
    dialog.show()
    dialog.grab().save(os.path.join(SHOTS, "diagnostics.png"))
    dialog.close()
