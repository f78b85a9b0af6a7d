"""Which build of torch suits this machine: CPU, or the CUDA build its NVIDIA driver can run.

PyTorch publishes one pip index per build (https://download.pytorch.org/whl/<tag>).  The CUDA
version in ``nvidia-smi``'s header is the newest CUDA runtime the installed driver supports;
a CUDA build of torch runs when its CUDA version is not newer than that.  The newest such build
is chosen; pip then takes the newest torch published for it.  No NVIDIA driver (or macOS, where
PyPI's torch uses the Apple GPU through MPS) means no CUDA build.
"""
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

PYTORCH_INDEX = "https://download.pytorch.org/whl/"
# PyTorch's CUDA builds (tag, CUDA version), oldest first.
CUDA_BUILDS = [("cu118", (11, 8)), ("cu121", (12, 1)), ("cu124", (12, 4)), ("cu126", (12, 6)),
               ("cu128", (12, 8)), ("cu129", (12, 9)), ("cu130", (13, 0))]
# Linux driver -> newest CUDA it supports (NVIDIA's CUDA Toolkit release notes, table 3), for
# an nvidia-smi too old to print "CUDA Version".
LINUX_DRIVER_CUDA = [((520, 61, 5), (11, 8)), ((525, 60, 13), (12, 0)), ((530, 30, 2), (12, 1)),
                     ((535, 54, 3), (12, 2)), ((545, 23, 6), (12, 3)), ((550, 54, 14), (12, 4)),
                     ((555, 42, 2), (12, 5)), ((560, 28, 3), (12, 6)), ((565, 57, 1), (12, 7)),
                     ((570, 26, 0), (12, 8)), ((575, 51, 3), (12, 9)), ((580, 65, 6), (13, 0))]


@dataclass(frozen=True)
class TorchBuild:
    tag: str            # "cpu", "cu126", ... or "pypi" (macOS: PyPI's own wheels)
    index_url: str      # pip --index-url for torch and torchvision ("" = pip's default, PyPI)
    reason: str         # one sentence for the dialog and the log
    gpu: str = ""       # the GPU's name when there is one

    @property
    def label(self):
        if self.tag.startswith("cu"):
            return f"CUDA {self.tag[2:-1]}.{self.tag[-1]} build"
        return "CPU build" if self.tag == "cpu" else "PyPI build (CPU; Apple GPU through MPS)"


def _version(text):
    return tuple(int(x) for x in text.split("."))


def parse_nvidia_smi(output):
    """(driver version tuple or None, CUDA version tuple or None, GPU names) from the plain
    ``nvidia-smi`` table."""
    output = output or ""
    driver = re.search(r"Driver Version:\s*([0-9]+(?:\.[0-9]+)*)", output)
    cuda = re.search(r"CUDA Version:\s*([0-9]+)\.([0-9]+)", output)
    # GPU rows: "|   0  NVIDIA GeForce RTX 3060   Off |" (Windows: WDDM or TCC for On/Off)
    gpus = re.findall(r"^\|\s+\d+\s+(.+?)\s+(?:On|Off|WDDM|TCC)\s+\|", output, flags=re.M)
    return (_version(driver.group(1)) if driver else None,
            (int(cuda.group(1)), int(cuda.group(2))) if cuda else None,
            [g.strip() for g in gpus])


def cuda_of_driver(driver, platform="linux"):
    """Newest CUDA a Linux driver supports (None if too old or unknown)."""
    if driver is None or not platform.startswith("linux"):
        return None
    driver = tuple(driver) + (0,) * (3 - len(driver))
    best = None
    for minimum, cuda in LINUX_DRIVER_CUDA:
        if driver >= minimum:
            best = cuda
    return best


def choose(nvidia_smi_output, platform=None):
    """The torch build for a machine, given ``nvidia-smi``'s output (None: no nvidia-smi)."""
    platform = platform or sys.platform
    if platform == "darwin":
        return TorchBuild("pypi", "", "macOS: PyPI's torch (CPU, and the Apple GPU via MPS).")
    cpu = PYTORCH_INDEX + "cpu"
    if not nvidia_smi_output:
        return TorchBuild("cpu", cpu, "No NVIDIA driver found (nvidia-smi): CPU build.")
    driver, cuda, gpus = parse_nvidia_smi(nvidia_smi_output)
    gpu = ", ".join(gpus)
    if driver is None:
        return TorchBuild("cpu", cpu, "nvidia-smi does not reach an NVIDIA driver: CPU build.")
    cuda = cuda or cuda_of_driver(driver, platform)
    driver_text = ".".join(str(x) for x in driver)
    if cuda is None:
        return TorchBuild("cpu", cpu, f"NVIDIA driver {driver_text} does not say which CUDA it "
                          "supports: CPU build (update the driver for GPU support).", gpu)
    fitting = [tag for tag, need in CUDA_BUILDS if need <= cuda]
    if not fitting:
        return TorchBuild("cpu", cpu, f"NVIDIA driver {driver_text} supports CUDA "
                          f"{cuda[0]}.{cuda[1]}, older than any CUDA build of torch "
                          f"(CUDA {CUDA_BUILDS[0][1][0]}.{CUDA_BUILDS[0][1][1]} or newer): CPU "
                          "build (update the driver for GPU support).", gpu)
    tag = fitting[-1]
    return TorchBuild(tag, PYTORCH_INDEX + tag,
                      f"{gpu or 'NVIDIA GPU'}, driver {driver_text} (CUDA {cuda[0]}.{cuda[1]}): "
                      f"torch's CUDA {tag[2:-1]}.{tag[-1]} build.", gpu)


def query_nvidia_smi(timeout=20):
    """``nvidia-smi``'s output, or None when there is no working nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None and sys.platform.startswith("win"):
        exe = shutil.which(r"C:\Windows\System32\nvidia-smi.exe")
    if exe is None:
        return None
    try:
        run = subprocess.run([exe], capture_output=True, text=True, timeout=timeout,
                             creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def detect():
    return choose(query_nvidia_smi())
