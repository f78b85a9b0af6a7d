"""Download a backbone: against a local hub on 127.0.0.1 (HF_ENDPOINT), never the internet."""
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

from conftest import TINY
from soilssl.core.backbone import load_backbone
from soilssl.core.download import (DownloadError, RECOMMENDED, cached_file, download_backbone,
                                   resolve_name)
from soilssl.core.errors import Cancelled
from soilssl.core.progress import Progress

NAME = "vit_tiny_patch16_224.augreg_in21k"  # a real timm name: repo timm/<NAME>
REPO = f"timm/{NAME}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """A minimal Hugging Face hub: /<repo>/resolve/main/<file> answers 302 with the hub's
    headers (X-Linked-Etag = SHA-256, X-Repo-Commit) to /cdn/<file>, which serves it."""

    def __init__(self, files):
        self.files = files          # file name -> bytes
        self.etag = {}              # file name -> advertised SHA-256 (default: the real one)
        self.requests = []
        self.auth = []
        self.cdn = ""               # e.g. http://localhost:PORT: the file from another host
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                hub.requests.append(self.path)
                hub.auth.append(self.headers.get("Authorization"))
                prefix = f"/{REPO}/resolve/main/"
                if self.path.startswith(prefix) and self.path[len(prefix):] in hub.files:
                    name = self.path[len(prefix):]
                    data = hub.files[name]
                    self.send_response(302)
                    self.send_header("Location", f"{hub.cdn}/cdn/{name}")
                    self.send_header("X-Linked-Etag", '"' + hub.etag.get(
                        name, hashlib.sha256(data).hexdigest()) + '"')
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path.startswith("/cdn/") and self.path[5:] in hub.files:
                    data = hub.files[self.path[5:]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("ETag", '"cdn-etag-not-a-checksum"')
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client that hung up
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def weights(tmp_path):
    """A random ViT-Tiny as model.safetensors bytes (what the hub serves for NAME)."""
    from safetensors.torch import save_file
    torch.manual_seed(7)
    ref = load_backbone("random", arch=TINY)
    save_file(ref.model.state_dict(), str(tmp_path / "w.safetensors"))
    return (tmp_path / "w.safetensors").read_bytes(), ref.model.state_dict()


@pytest.fixture
def hub(weights, monkeypatch, tmp_path):
    h = Hub({"model.safetensors": weights[0]})
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    yield h
    h.close()


def _blobs(tmp_path):
    folder = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_into_the_cache_then_load_by_name_offline(hub, weights, tmp_path,
                                                           monkeypatch):
    data, sd = weights
    sha = hashlib.sha256(data).hexdigest()
    seen, said = [], []
    r = download_backbone(NAME, progress=Progress(seen.append, on_info=said.append))
    assert r["downloaded"] and r["verified"] and r["sha256"] == sha and r["size"] == len(data)
    assert r["commit"] == COMMIT
    assert r["path"] == str(tmp_path / "hub" / f"models--timm--{NAME}" / "snapshots" / COMMIT /
                            "model.safetensors")
    assert open(r["path"], "rb").read() == data
    assert _blobs(tmp_path) == [sha]  # the blob is named by its checksum; no leftovers
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)
    assert any(sha in m and "verified" in m for m in said)
    assert cached_file(REPO, "model.safetensors") == r["path"]
    # from now on the name works offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = load_backbone(NAME)
    assert b.arch == TINY and b.checksum == sha
    assert all(torch.equal(b.model.state_dict()[k], sd[k]) for k in sd)
    # a second call finds it in the cache (checksum recomputed, nothing fetched)
    n = len(hub.requests)
    again = download_backbone(NAME, sha256=sha.upper())
    assert not again["downloaded"] and again["path"] == r["path"] and len(hub.requests) == n
    with pytest.raises(DownloadError, match="has SHA-256 .* not 0{64}"):
        download_backbone(NAME, sha256="0" * 64)


def test_checksum_mismatch_keeps_nothing(hub, tmp_path):
    hub.etag["model.safetensors"] = "f" * 64
    with pytest.raises(DownloadError, match="Checksum mismatch.*expected f{64}"):
        download_backbone(NAME)
    assert _blobs(tmp_path) == [] and cached_file(REPO, "model.safetensors") is None
    hub.etag.clear()
    with pytest.raises(DownloadError, match="Checksum mismatch.*expected a{64}"):
        download_backbone(NAME, sha256="a" * 64)  # the user's checksum wins
    assert _blobs(tmp_path) == []
    with pytest.raises(DownloadError, match="not a SHA-256"):
        download_backbone(NAME, sha256="abc")


def test_cancel_keeps_nothing(hub, tmp_path, monkeypatch):
    import soilssl.core.download as dl
    monkeypatch.setattr(dl, "CHUNK", 4096)  # many chunks: cancel lands mid-file
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="Download cancelled"):
        download_backbone(NAME, progress=Progress(is_cancelled=cancelled))
    assert _blobs(tmp_path) == [] and cached_file(REPO, "model.safetensors") is None


def test_offline_and_unknown_names_fail_clearly(hub, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=rf"Cannot reach 127\.0\.0\.1:{port}.*offline.*"
                                            r"give the file as BACKBONE"):
        download_backbone(NAME, timeout=5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        download_backbone(NAME)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DownloadError, match="not a timm pretrained name"):
        download_backbone("vit_small_patch16_224.nonexistent")
    hub.files.clear()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_backbone(NAME)


def test_token_goes_to_the_hub_not_to_the_file_host(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-test-token")
    hub.cdn = hub.url.replace("127.0.0.1", "localhost")  # another host name
    download_backbone(NAME)
    assert hub.requests[0].startswith(f"/{REPO}/resolve/main/")
    assert hub.requests[1] == "/cdn/model.safetensors"
    assert hub.auth[:2] == ["Bearer secret-test-token", None]


def test_recommended_backbones_resolve_to_hub_files():
    for r in RECOMMENDED:
        repo, filename = resolve_name(r["name"])
        assert repo == "timm/" + r["name"] and filename == "model.safetensors"
        assert r["licence"] and r["size_mb"] > 0
    assert any("sat493m" in r["name"] and "DINOv3 License" in r["licence"]
               for r in RECOMMENDED)


def test_processing_download_algorithm(qgis_app, hub, weights):
    import processing
    from qgis.core import QgsProcessingException
    res = processing.run("soilssl:downloadbackbone", {"NAME": NAME})
    assert res["DOWNLOADED"] and res["SHA256_OUT"] == hashlib.sha256(weights[0]).hexdigest()
    assert os.path.isfile(res["OUTPUT"])
    res = processing.run("soilssl:downloadbackbone", {"NAME": NAME})
    assert not res["DOWNLOADED"]
    with pytest.raises(QgsProcessingException, match="not a timm pretrained name"):
        processing.run("soilssl:downloadbackbone", {"NAME": "no_such_model.tag"})
    alg = qgis_app.processingRegistry().algorithmById("soilssl:downloadbackbone")
    help_text = alg.shortHelpString()
    assert "vit_large_patch16_dinov3.sat493m" in help_text and "DINOv3 License" in help_text
    assert "Apache-2.0" in help_text


def test_command_line(hub, capsys):
    from soilssl.core.download import main
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "vit_large_patch16_dinov3.sat493m" in listing and "Apache-2.0" in listing
    assert main([NAME]) == 0
    assert capsys.readouterr().out.strip().endswith("model.safetensors")
    assert main(["no_such_model.tag"]) == 1
    assert "not a timm pretrained name" in capsys.readouterr().err
