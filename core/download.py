"""Download a timm backbone checkpoint once, into the local Hugging Face cache.

Everything else in SoilSSL works offline from files; this is the one place that
reaches the network, and only when the user asks for it (``soilssl:downloadbackbone``
or ``python -m soilssl.core.download NAME``).  :func:`download_backbone` fetches the
weights file of a timm pretrained name (``vit_large_patch16_dinov3.sat493m``) from
the Hugging Face hub -- ``$HF_ENDPOINT`` when set, e.g. a mirror --, with progress,
cancel and a SHA-256 checksum (checked against the hub's ``X-Linked-Etag`` for
large files, or against ``sha256`` when given).  The file is laid out as
``huggingface_hub`` caches it (``models--org--name/blobs`` + ``snapshots/<commit>``
+ ``refs/main``), so that :func:`soilssl.core.backbone.load_backbone` and timm find
it by name afterwards, offline.  A partial download never appears in the cache
(temporary file + rename).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from .errors import BackboneError, Cancelled
from .files import discard, temp_beside
from .progress import Progress, ensure

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Backbones worth trying for soil work (sizes: the safetensors file on the hub).
RECOMMENDED = [
    {"name": "vit_base_patch16_224.dino", "family": "DINO (2021)", "params_m": 86,
     "size_mb": 343, "licence": "Apache-2.0",
     "note": "the paper's starting point: DINO ViT-B/16 on ImageNet"},
    {"name": "vit_small_patch16_224.dino", "family": "DINO (2021)", "params_m": 22,
     "size_mb": 87, "licence": "Apache-2.0", "note": "DINO ViT-S/16, for laptops"},
    {"name": "vit_small_patch14_reg4_dinov2.lvd142m", "family": "DINOv2", "params_m": 22,
     "size_mb": 88, "licence": "Apache-2.0",
     "note": "patch 14, 4 register tokens, LVD-142M natural images"},
    {"name": "vit_base_patch14_reg4_dinov2.lvd142m", "family": "DINOv2", "params_m": 86,
     "size_mb": 347, "licence": "Apache-2.0", "note": "DINOv2 ViT-B/14 with registers"},
    {"name": "vit_small_patch16_dinov3.lvd1689m", "family": "DINOv3", "params_m": 22,
     "size_mb": 86, "licence": "DINOv3 License (Meta; not open source: read it first)",
     "note": "RoPE, 4 storage tokens; distilled from DINOv3 7B on LVD-1689M web images"},
    {"name": "vit_large_patch16_dinov3.sat493m", "family": "DINOv3", "params_m": 300,
     "size_mb": 1213, "licence": "DINOv3 License (Meta; not open source: read it first)",
     "note": "satellite weights: 493 M Maxar tiles at 0.6 m, very-high-resolution imagery "
             "like the paper's"},
]


class DownloadError(BackboneError):
    """A download that could not be done (offline, unknown name, checksum...)."""


def endpoint() -> str:
    """The hub to download from: ``$HF_ENDPOINT`` (a mirror, or a local test server)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_root() -> str:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, ``$HF_HOME/hub``...)."""
    try:
        import huggingface_hub.constants as hc
        return hc.HF_HUB_CACHE
    except ImportError:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface")
        return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def resolve_name(name: str) -> tuple:
    """``(hub repo, file name)`` of a timm pretrained name (``arch.tag``)."""
    from timm.models import get_pretrained_cfg
    name = (name or "").strip()
    try:
        cfg = get_pretrained_cfg(name) if name else None
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        known = ", ".join(r["name"] for r in RECOMMENDED)
        raise DownloadError(f"'{name}' is not a timm pretrained name with weights on the "
                            f"Hugging Face hub (e.g. {known}).")
    return cfg.hf_hub_id, getattr(cfg, "hf_hub_filename", None) or "model.safetensors"


def cached_file(repo: str, filename: str, cache: Optional[str] = None) -> Optional[str]:
    """The file if it is already in the cache (the ``refs/main`` snapshot), else None."""
    folder = os.path.join(cache or cache_root(), "models--" + repo.replace("/", "--"))
    try:
        with open(os.path.join(folder, "refs", "main"), encoding="utf-8") as f:
            commit = f.read().strip()
    except OSError:
        return None
    path = os.path.join(folder, "snapshots", commit, filename)
    return path if os.path.isfile(path) else None


class _KeepRedirectHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the hub's own headers (checksum, commit): the file itself
    is served by a CDN whose headers do not carry them."""

    def __init__(self):
        self.seen = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.seen.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        # the token is for the hub only, never for the CDN
        if new is not None and urllib.parse.urlsplit(newurl).netloc != \
                urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _header(responses, *names) -> Optional[str]:
    for headers in responses:
        for name in names:
            value = headers.get(name)
            if value:
                return value.strip().strip('"').removeprefix("W/").strip('"')
    return None


def _offline(url: str, exc: BaseException) -> DownloadError:
    return DownloadError(
        f"Cannot reach {urllib.parse.urlsplit(url).netloc} to download the backbone "
        f"({getattr(exc, 'reason', exc)}): this computer seems to be offline or behind a "
        f"proxy (set HTTPS_PROXY) or a firewall. Download {url} on a connected computer and "
        f"give the file as BACKBONE; everything else in SoilSSL works offline from files.")


def download_backbone(name: str, sha256: Optional[str] = None, cache: Optional[str] = None,
                      force: bool = False, timeout: float = 30.0,
                      progress: Optional[Progress] = None) -> dict:
    """Fetch the weights of timm pretrained ``name`` into the hub cache; returns
    ``{"name", "path", "sha256", "size", "repo", "commit", "downloaded"}``.

    An already cached file is not fetched again (unless ``force``): its checksum is
    computed and compared with ``sha256`` when given.  Raises :class:`DownloadError`
    (offline, unknown name, HTTP error, checksum mismatch) or :class:`Cancelled`.
    """
    progress = ensure(progress)
    repo, filename = resolve_name(name)
    cache = cache or cache_root()
    want = sha256.strip().lower() if sha256 else None
    if want and not _SHA256.match(want):
        raise DownloadError(f"SHA256 '{sha256}' is not a SHA-256 checksum (64 hex digits).")
    have = None if force else cached_file(repo, filename, cache)
    if have:
        got = _sha256_of(have, progress)
        if want and got != want:
            raise DownloadError(f"The cached '{have}' has SHA-256 {got}, not {want}: delete it "
                                f"or download again with FORCE.")
        progress.info(f"{name} is already in the cache: {have}")
        return {"name": name, "path": have, "sha256": got, "size": os.path.getsize(have),
                "repo": repo, "commit": os.path.basename(os.path.dirname(have)),
                "downloaded": False}
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DownloadError(f"Downloads are switched off (HF_HUB_OFFLINE is set) and {name} is "
                            f"not in the cache ({cache}): unset HF_HUB_OFFLINE, or give the "
                            f"weights file as BACKBONE.")
    url = f"{endpoint()}/{repo}/resolve/main/{urllib.parse.quote(filename)}"
    request = urllib.request.Request(url, headers={"User-Agent": "soilssl"})
    token = os.environ.get("HF_TOKEN")
    if token:  # only needed for gated repositories
        request.add_header("Authorization", f"Bearer {token}")
    redirects = _KeepRedirectHeaders()
    opener = urllib.request.build_opener(redirects)
    progress.info(f"Downloading {name} from {url} ...")
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise DownloadError(f"{url} refused the download (HTTP {exc.code}): the repository "
                                f"may be gated; accept its licence on the hub and set HF_TOKEN."
                                ) from exc
        if exc.code == 404:
            raise DownloadError(f"{url} does not exist on {endpoint()} (HTTP 404).") from exc
        raise DownloadError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}.") from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        raise _offline(url, exc) from exc
    with response:
        headers = redirects.seen + [response.headers]
        expected = want or _checksum_header(headers)
        commit = _header(headers, "X-Repo-Commit") or "main"
        if not re.match(r"^[\w.-]+$", commit):
            commit = "main"
        total = int(response.headers.get("Content-Length") or 0) or None
        blobs = os.path.join(cache, "models--" + repo.replace("/", "--"), "blobs")
        tmp = temp_beside(os.path.join(blobs, "download"), ".incomplete")
        h, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                while True:
                    progress.check()
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, socket.timeout) as exc:
                        raise _offline(url, exc) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    if total:
                        progress.set(size / total)
            if total and size != total:
                raise DownloadError(f"The download of {url} stopped after {size} of {total} "
                                    f"bytes: try again.")
            got = h.hexdigest()
            if expected and got != expected:
                raise DownloadError(f"Checksum mismatch for {url}: SHA-256 {got}, expected "
                                    f"{expected}. The file was not kept; try again.")
            path = _publish(tmp, cache, repo, commit, filename, got)
        except BaseException as exc:
            discard(tmp)
            if isinstance(exc, Cancelled):
                raise Cancelled("Download cancelled; nothing was kept.") from None
            raise
    progress.set(1.0)
    progress.info(f"{name}: {size / 1e6:.1f} MB, SHA-256 {got}"
                  f"{' (verified)' if expected else ''} -> {path}")
    return {"name": name, "path": path, "sha256": got, "size": size, "repo": repo,
            "commit": commit, "downloaded": True, "verified": bool(expected)}


def _checksum_header(headers) -> Optional[str]:
    """The hub's SHA-256 of an LFS file (X-Linked-Etag; ETag when it is one)."""
    value = _header(headers, "X-Linked-Etag", "ETag")
    return value.lower() if value and _SHA256.match(value.lower()) else None


def _sha256_of(path: str, progress: Progress) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            progress.check()
            h.update(chunk)
    return h.hexdigest()


def _publish(tmp: str, cache: str, repo: str, commit: str, filename: str, sha: str) -> str:
    """Move the finished download into the hub cache layout and point refs/main at it."""
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    blob = os.path.join(folder, "blobs", sha)
    snap = os.path.join(folder, "snapshots", commit, filename)
    os.makedirs(os.path.dirname(snap), exist_ok=True)
    os.replace(tmp, blob)
    if os.path.lexists(snap):
        os.remove(snap)
    try:
        os.symlink(os.path.relpath(blob, os.path.dirname(snap)), snap)
    except OSError:  # no symlinks (Windows without developer mode): a copy
        shutil.copyfile(blob, snap)
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    ref = temp_beside(os.path.join(folder, "refs", "main"))
    with open(ref, "w", encoding="utf-8") as f:
        f.write(commit)
    os.replace(ref, os.path.join(folder, "refs", "main"))
    return snap


def recommended_table() -> str:
    """The recommended backbones as text lines (for the CLI and the help)."""
    return "\n".join(f"{r['name']:40s} {r['family']:12s} {r['params_m']:>4d} M params "
                     f"{r['size_mb']:>5d} MB  {r['licence']}: {r['note']}" for r in RECOMMENDED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m soilssl.core.download",
                                description="Download a timm backbone into the local cache.")
    p.add_argument("name", nargs="?", help="timm pretrained name, e.g. "
                                          "vit_large_patch16_dinov3.sat493m")
    p.add_argument("--sha256", help="Expected SHA-256 of the file.")
    p.add_argument("--force", action="store_true", help="Download again even if cached.")
    p.add_argument("--list", action="store_true", help="List the recommended backbones.")
    a = p.parse_args(argv)
    if a.list or not a.name:
        print(recommended_table())
        return 0
    progress = Progress(on_info=print)
    try:
        r = download_backbone(a.name, a.sha256, force=a.force, progress=progress)
    except (BackboneError, Cancelled) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(r["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
