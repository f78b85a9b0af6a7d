"""Backbone loading: the one way SoilSSL builds a ViT and fills its weights.

:func:`load_backbone` accepts

* a SoilSSL checkpoint (``{"soilssl": {...}, "arch", "in_chans", "tile_size",
  "normalization", "backbone": state_dict}``) written by :func:`save_backbone`
  or by pretraining;
* an official DINO file: a plain backbone state dict
  (``dino_vitbase16_pretrain.pth``) or a full training checkpoint with
  ``teacher``/``student`` dicts whose keys carry ``module.``/``backbone.``
  prefixes (the DINO head is dropped);
* a timm state dict (``.pth``/``.bin``/``.safetensors``), wrapped or not in
  ``state_dict``/``model``;
* a timm pretrained name (``vit_base_patch16_224.dino``) resolved from the
  local Hugging Face or torch-hub cache only — never downloaded;
* ``None``/``"random"`` for a randomly initialised ``arch``.

Files are read with ``torch.load(weights_only=True)``: a file carrying pickled
code is refused, never executed.  When more input channels are asked for than
the weights have, the patch-embedding weights of each extra channel are cloned
from the first (R) channel (the paper's RGB+DEM recipe); timm resamples the
position embedding for another tile size.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import BackboneError, DeviceError
from .files import atomic_save

FORMAT = "soilssl-backbone"
RANDOM = "random"
_STANDARD = {192: ("tiny", 12), 384: ("small", 12), 768: ("base", 12), 1024: ("large", 24)}


@dataclass
class Backbone:
    model: torch.nn.Module
    arch: str
    in_chans: int
    tile_size: int
    embed_dim: int
    source: str
    checksum: Optional[str] = None
    normalization: Optional[dict] = None
    meta: dict = field(default_factory=dict)

    @property
    def reference(self) -> dict:
        """What products record about the backbone that made them."""
        return {"source": self.source, "arch": self.arch, "in_chans": self.in_chans,
                "tile_size": self.tile_size, "sha256": self.checksum}


def resolve_device(device: str = "auto") -> torch.device:
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("DEVICE=cuda was asked for but CUDA is not available on this machine "
                          "(no NVIDIA GPU or a CPU-only torch): use DEVICE=auto or cpu.")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise DeviceError(f"Unknown DEVICE '{device}': use auto, cpu or cuda.")
    return torch.device(device)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# pickle opcodes that name or build Python objects: GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX,
# STACK_GLOBAL (torch's weights-only unpickler reports them as "Unsupported operand N")
_CODE_OPCODES = re.compile(r"Unsupported operand (99|105|111|129|146|149)\b")


def _pickles_code(message: str) -> bool:
    """Whether torch's weights-only refusal is about pickled objects/code (not junk bytes)."""
    return "GLOBAL" in message or "Unsupported global" in message or \
        bool(_CODE_OPCODES.search(message))


def load_file(path: str):
    """Read a checkpoint file safely (weights_only / safetensors)."""
    if not os.path.isfile(path):
        raise BackboneError(f"Backbone file '{path}' does not exist.")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file as st_load
            return st_load(path)
        except Exception as exc:
            raise BackboneError(f"'{path}' is not a readable safetensors file: {exc}") from exc
    try:
        # official DINO training checkpoints carry their argparse arguments: plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if _pickles_code(msg):
            raise BackboneError(
                f"Refused to load '{os.path.basename(path)}': it carries pickled Python objects or "
                f"code, which SoilSSL never executes (torch.load weights_only=True). Save the "
                f"weights as a plain state dict (torch.save(model.state_dict(), ...)).") from exc
        # (not torch's text: it suggests weights_only=False, which would run pickled code)
        raise BackboneError(f"'{os.path.basename(path)}' is not a PyTorch checkpoint or is "
                            f"damaged (unreadable pickle data).") from exc
    except Exception as exc:
        raise BackboneError(
            f"'{os.path.basename(path)}' is not a PyTorch checkpoint or is damaged "
            f"({type(exc).__name__}: {exc}).") from exc


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def _strip(sd: dict) -> dict:
    """Remove DDP/DINO wrappers and head keys."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(module\.)?(backbone\.)?", "", k)
        if k.startswith("head."):  # classifier or DINO projection head
            continue
        out[k] = v
    return out


def unwrap(obj, name: str = "checkpoint") -> tuple:
    """-> (state_dict, info) for any supported in-memory checkpoint."""
    if isinstance(obj, dict) and isinstance(obj.get("soilssl"), dict):
        info = obj["soilssl"]
        if info.get("format") not in (FORMAT, "soilssl-pretrain"):
            raise BackboneError(f"'{name}' is a SoilSSL {info.get('format')} file, not a backbone.")
        return dict(obj["backbone"]), {
            "arch": obj.get("arch"), "in_chans": obj.get("in_chans"),
            "tile_size": obj.get("tile_size"), "normalization": obj.get("normalization"),
            "kind": "soilssl"}
    if isinstance(obj, dict) and ("teacher" in obj or "student" in obj):
        key = "teacher" if "teacher" in obj else "student"
        sd = obj[key]
        if not _is_state_dict(sd):
            raise BackboneError(f"'{name}': the '{key}' entry is not a state dict.")
        return _strip(sd), {"kind": f"dino-{key}"}
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return _strip(obj[key]), {"kind": key}
    if _is_state_dict(obj):
        return _strip(obj), {"kind": "state_dict"}
    raise BackboneError(
        f"'{name}' holds no ViT weights SoilSSL recognises (expected a SoilSSL checkpoint, a DINO "
        f"checkpoint, or a timm state dict).")


def infer_arch(sd: dict) -> Optional[str]:
    """Guess a standard timm ViT name from state-dict shapes (None if not standard)."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    std = _STANDARD.get(dim)
    if std is None or std[1] != depth:
        return None
    return f"vit_{std[0]}_patch{patch}_224"


def create_model(arch: str, in_chans: int = 3, tile_size: int = 224,
                 **timm_kwargs) -> torch.nn.Module:
    """A timm ViT without classifier; ``timm_kwargs`` go to ``timm.create_model`` (e.g.
    ``dynamic_img_size=True`` for multi-crop training, ``drop_path_rate``); they change no
    state-dict key, so the weights load into a model built without them."""
    import timm
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans,
                                 img_size=tile_size, **timm_kwargs)
    except RuntimeError as exc:
        raise BackboneError(f"Unknown architecture '{arch}': use a timm ViT name such as "
                            f"vit_small_patch16_224 ({exc}).") from exc
    except TypeError as exc:
        raise BackboneError(f"'{arch}' is not a ViT timm can build with in_chans/img_size: "
                            f"{exc}") from exc


def clone_channels(sd: dict, in_chans: int) -> dict:
    """Give the patch embedding ``in_chans`` inputs, extra ones cloned from channel 0 (R)."""
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        return sd
    have = int(w.shape[1])
    if have == in_chans:
        return sd
    if have > in_chans:
        raise BackboneError(f"Channel mismatch: the weights expect {have} input channels but "
                            f"{in_chans} were given (bands + DEM). Select {have} channels.")
    extra = w[:, :1].expand(-1, in_chans - have, -1, -1)
    sd = dict(sd)
    sd["patch_embed.proj.weight"] = torch.cat([w, extra], dim=1).contiguous()
    return sd


def _timm_cache_file(name: str) -> Optional[str]:
    """Local file of a timm pretrained tag, from the HF or torch-hub cache; None if absent."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import try_to_load_from_cache
            for fname in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
                p = try_to_load_from_cache(cfg.hf_hub_id, fname)
                if isinstance(p, str) and os.path.isfile(p):
                    return p
        except ImportError:
            pass
    if getattr(cfg, "url", None):
        p = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(p):
            return p
    return None


def _is_pretrained_name(spec: str) -> bool:
    return "." in spec and not os.path.sep in spec and not os.path.exists(spec) and \
        not spec.lower().endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))


def load_backbone(spec: Optional[str], arch: Optional[str] = None, in_chans: Optional[int] = None,
                  tile_size: Optional[int] = None, device: str = "cpu",
                  **timm_kwargs) -> Backbone:
    """Build a timm ViT (``num_classes=0``) with weights from ``spec``.

    ``arch``/``in_chans``/``tile_size`` default to what the checkpoint says
    (SoilSSL files) or can be inferred; given explicitly they must agree with
    it, except that extra channels are cloned from R and the position
    embedding is resampled to ``tile_size``.  ``timm_kwargs`` go to
    :func:`create_model` (pretraining builds with ``dynamic_img_size=True``).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    checksum = None
    info: dict = {"kind": "random"}
    sd = None
    source = spec or RANDOM
    if spec and spec != RANDOM:
        path = spec
        if _is_pretrained_name(spec):
            path = _timm_cache_file(spec)
            if path is None:
                raise BackboneError(
                    f"'{spec}' is not in the local model cache and SoilSSL does not download "
                    f"weights. Download the weights file once (e.g. the DINO checkpoint) and give "
                    f"its path as BACKBONE, or copy it into the Hugging Face cache.")
            arch = arch or spec.split(".")[0]
        obj = load_file(path)
        checksum = file_sha256(path)
        sd, info = unwrap(obj, os.path.basename(path))
    ck_arch = info.get("arch")
    if ck_arch and arch and ck_arch != arch:
        raise BackboneError(f"Architecture mismatch: the checkpoint is '{ck_arch}' but ARCH is "
                            f"'{arch}'. Leave ARCH empty to use the checkpoint's.")
    arch = arch or ck_arch or (infer_arch(sd) if sd is not None else None)
    if not arch:
        raise BackboneError("The backbone file does not name its architecture and it cannot be "
                            "inferred: set ARCH (a timm ViT name such as vit_small_patch16_224).")
    ck_chans = info.get("in_chans") or (int(sd["patch_embed.proj.weight"].shape[1])
                                        if sd is not None and "patch_embed.proj.weight" in sd else 3)
    in_chans = int(in_chans or ck_chans)
    tile_size = int(tile_size or info.get("tile_size") or 224)
    model = create_model(arch, in_chans, tile_size, **timm_kwargs)
    if sd is not None:
        sd = clone_channels(sd, in_chans)
        want = int(model.num_features)
        have = int(sd["patch_embed.proj.weight"].shape[0]) if "patch_embed.proj.weight" in sd \
            else want
        if have != want:
            raise BackboneError(
                f"Architecture mismatch: '{arch}' expects embedding dimension {want} but the "
                f"weights have {have} (found {infer_arch(sd) or 'a non-standard ViT'}). "
                f"Set ARCH accordingly.")
        try:
            sd = checkpoint_filter_fn(sd, model)
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:
            raise BackboneError(f"The weights do not fit '{arch}': {str(exc)[:500]}") from exc
        missing = [k for k in missing if not k.startswith("head")]
        unexpected = [k for k in unexpected if not k.startswith("head")]
        if missing or unexpected:
            raise BackboneError(
                f"The weights do not fit '{arch}': expected keys missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys found {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}.")
    model.eval().to(resolve_device(device))
    return Backbone(model=model, arch=arch, in_chans=in_chans, tile_size=tile_size,
                    embed_dim=int(model.num_features), source=str(source), checksum=checksum,
                    normalization=info.get("normalization"), meta={"kind": info.get("kind")})


def backbone_checkpoint(model: torch.nn.Module, arch: str, in_chans: int, tile_size: int,
                        normalization: Optional[dict] = None, **extra) -> dict:
    """The SoilSSL backbone checkpoint dict (weights_only-loadable)."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ck = {"soilssl": {"format": FORMAT, "version": 1}, "arch": arch, "in_chans": int(in_chans),
          "tile_size": int(tile_size), "normalization": normalization, "backbone": sd}
    ck.update(extra)
    return ck


def save_backbone(path: str, model: torch.nn.Module, arch: str, in_chans: int, tile_size: int,
                  normalization: Optional[dict] = None, **extra) -> str:
    return atomic_save(backbone_checkpoint(model, arch, in_chans, tile_size, normalization,
                                           **extra), path)
