"""The guard that keeps triton (a second LLVM, fatal next to Mesa's in QGIS desktop) out of
QGIS's process.  Each case runs in a fresh interpreter: what is imported is process-wide."""
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PKG_DIR

TRITON = importlib.machinery.PathFinder.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not TRITON, reason="triton is not installed here")

PRELUDE = """
import importlib.util, json, logging, sys
sys.path.insert(0, {pkg!r})
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger("soilssl").addHandler(Keep())
logging.getLogger("soilssl").setLevel(logging.INFO)
def libtriton():
    return any(l.rstrip().endswith("libtriton.so") for l in open("/proc/self/maps"))
def blocked():
    try:
        import triton  # noqa: F401
        return False
    except ImportError:
        return importlib.util.find_spec("triton") is None
out = {{}}
"""


def run(body):
    code = PRELUDE.format(pkg=PKG_DIR) + textwrap.dedent(body) + \
        "\nprint('RESULT ' + json.dumps(out))\n"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("TORCH_COMPILE_DISABLE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_guard_first_then_torch_and_timm_run_without_triton():
    out = run("""
        from soilssl.nativeguard import keep_out
        report = keep_out()
        out["state"] = report.states["triton"]
        out["torch_before"] = report.torch_loaded
        import torch
        from soilssl.core.backbone import create_model
        model = create_model("vit_tiny_patch16_224", 3, 32)
        out["shape"] = list(model(torch.zeros(1, 3, 32, 32)).shape)
        out["blocked"] = blocked()
        out["libtriton"] = libtriton()
        out["second"] = keep_out().states["triton"]
        out["records"] = records
        import os
        out["compile_disabled"] = os.environ.get("TORCH_COMPILE_DISABLE")
    """)
    assert out["state"] == ("blocked" if TRITON else "absent")
    assert out["torch_before"] is False
    assert out["shape"][0] == 1
    assert out["blocked"] and not out["libtriton"]
    assert out["second"] == "already-blocked"
    assert out["compile_disabled"] == "1"
    # logged once, as info, on the soilssl logger
    assert len(out["records"]) == 1 and out["records"][0][0] == "INFO"
    assert "triton" in out["records"][0][1]


def test_torch_imported_first_by_another_plugin_is_still_guarded():
    out = run("""
        import torch  # another plugin imported torch (not timm) before SoilSSL loaded
        from soilssl.nativeguard import keep_out
        report = keep_out()
        out["state"] = report.states["triton"]
        out["torch_before"] = report.torch_loaded
        out["message"] = report.message()
        import timm  # imports torch._dynamo, which looks for triton
        out["blocked"] = blocked()
        out["libtriton"] = libtriton()
    """)
    assert out["state"] == ("blocked" if TRITON else "absent")
    assert out["torch_before"] is True and "torch already imported" in out["message"]
    assert out["blocked"] and not out["libtriton"]


@needs_triton
def test_triton_loaded_before_the_guard_is_reported_not_hidden():
    out = run("""
        import timm  # another plugin imported timm: torch._dynamo loaded triton
        out["loaded_before"] = libtriton()
        from soilssl.nativeguard import keep_out
        report = keep_out()
        out["state"] = report.states["triton"]
        out["llvm"] = report.native_llvm
        out["records"] = records
    """)
    assert out["loaded_before"]
    assert out["state"] == "loaded"
    assert any(p.endswith("libtriton.so") for p in out["llvm"])
    assert len(out["records"]) == 1
    level, message = out["records"][0]
    assert level == "WARNING" and "already imported before SoilSSL" in message


def test_qgis_loading_the_plugin_blocks_triton_before_torch():
    out = run("""
        sys.path.insert(0, "/usr/share/qgis/python/plugins")
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        logged = []
        QgsApplication.messageLog().messageReceived.connect(
            lambda msg, tag, level: logged.append((tag, msg)))
        import soilssl
        plugin = soilssl.classFactory(None)
        plugin.initProcessing()
        out["torch_loaded"] = "torch" in sys.modules
        out["triton"] = repr(sys.modules.get("triton", "missing"))
        out["logged"] = logged
        plugin.unload()
    """)
    assert out["torch_loaded"] is False  # the guard ran before any torch import
    assert out["triton"] == "None"
    assert any(tag == "SoilSSL" and "guard" in msg for tag, msg in out["logged"])


@needs_triton
def test_engine_outside_qgis_is_not_guarded():
    """A notebook or `torchrun -m soilssl.core.pretrain` may use triton (torch.compile on a
    GPU): importing the package or the engine blocks nothing."""
    out = run("""
        import soilssl.core.backbone  # noqa: F401
        import timm  # noqa: F401
        out["triton"] = type(sys.modules.get("triton")).__name__
    """)
    assert out["triton"] == "module"
