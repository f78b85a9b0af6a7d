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

Every timm ViT family loads the same way: DINO v1 (``vit_*_patch16_224``),
DINOv2 (``vit_*_patch14_dinov2``, ``vit_*_patch14_reg4_dinov2``: patch 14,
register tokens) and DINOv3 (``vit_*_patch16_dinov3``, the ``.sat493m``
satellite weights: RoPE, storage tokens), including Meta's own files of
DINOv2/DINOv3 (each family's timm ``checkpoint_filter_fn`` converts them).
An architecture may carry timm keyword arguments after a colon,
``vit_small_patch16_dinov3:depth=2,embed_dim=64,num_heads=2``, for models
other than the standard sizes; SoilSSL checkpoints record it so.  The tile
size is snapped to a multiple of the patch size (with a message).

Files are read with ``torch.load(weights_only=True)``: a file carrying pickled
code is refused, never executed.  When more input channels are asked for than
the weights have, the patch-embedding weights of each extra channel are cloned
from the first (R) channel (the paper's RGB+DEM recipe); timm resamples the
position embedding for another tile size.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import BackboneError, DeviceError
from .files import atomic_save
from .progress import Progress, ensure

FORMAT = "soilssl-backbone"
RANDOM = "random"
_STANDARD = {192: ("tiny", 12), 384: ("small", 12), 768: ("base", 12), 1024: ("large", 24)}
_STANDARD_V2 = {**_STANDARD, 1536: ("giant", 40)}
_STANDARD_V3 = {**_STANDARD, 1280: ("huge_plus", 32), 4096: ("7b", 40)}


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
    def patch_size(self) -> int:
        return model_patch_size(self.model)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens: class token + register/storage tokens."""
        return int(getattr(self.model, "num_prefix_tokens", 1))

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
    """Guess a standard timm ViT name from state-dict keys and shapes (None if not standard):
    DINOv3 (layer scale ``gamma_1`` or Meta's ``storage_tokens``, no absolute position
    embedding), DINOv2 (patch 14, layer scale ``ls1``, register tokens), else DINO/ViT."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    if "storage_tokens" in sd or ("blocks.0.gamma_1" in sd and "pos_embed" not in sd) or \
            ("blocks.0.ls1.gamma" in sd and "pos_embed" not in sd):
        std = _STANDARD_V3.get(dim)
        qkvb = "blocks.0.attn.qkv.bias" in sd or "blocks.0.attn.q_bias" in sd
        return f"vit_{std[0]}_patch{patch}_dinov3{'_qkvb' if qkvb else ''}" \
            if std and std[1] == depth else None
    if patch == 14 and "blocks.0.ls1.gamma" in sd:
        std = _STANDARD_V2.get(dim)
        reg = sd.get("reg_token", sd.get("register_tokens"))
        tag = f"_reg{int(reg.shape[1])}" if reg is not None else ""
        return f"vit_{std[0]}_patch14{tag}_dinov2" if std and std[1] == depth else None
    std = _STANDARD.get(dim)
    if std is None or std[1] != depth:
        return None
    return f"vit_{std[0]}_patch{patch}_224"


def describe_weights(sd: dict) -> str:
    """What the shapes say (for an error message): patch, width, blocks, extra tokens."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return "no patch embedding"
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    reg = sd.get("reg_token", sd.get("register_tokens", sd.get("storage_tokens")))
    return (f"patch {int(w.shape[-1])}, embedding dimension {int(w.shape[0])}, {depth} blocks"
            f"{f', {int(reg.shape[1])} register tokens' if reg is not None else ''}")


def parse_arch(arch: str) -> tuple:
    """``'name:depth=2,embed_dim=64'`` -> ``('name', {'depth': 2, 'embed_dim': 64})``."""
    name, _, rest = str(arch).strip().partition(":")
    kwargs = {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise BackboneError(f"ARCH '{arch}': write timm arguments as name:key=value,... "
                                f"(e.g. vit_small_patch16_dinov3:depth=2,embed_dim=64).")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def arch_patch_size(arch: str) -> Optional[int]:
    """The patch size an architecture name (or its ``patch_size=`` argument) gives."""
    name, kwargs = parse_arch(arch)
    if "patch_size" in kwargs:
        return int(kwargs["patch_size"])
    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else None


def model_patch_size(model: torch.nn.Module) -> int:
    p = model.patch_embed.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def snap_tile(tile: int, patch: int, progress: Optional[Progress] = None,
              what: str = "TILE_SIZE") -> int:
    """``tile`` rounded to the nearest multiple of ``patch`` (at least one patch); says so
    when it changes (a ViT sees whole patches only: the rest of the tile would be lost)."""
    tile, patch = int(tile), int(patch)
    snapped = max(patch, int(round(tile / patch)) * patch)
    if snapped != tile:
        ensure(progress).info(f"{what} {tile} px is not a multiple of the backbone's patch size "
                              f"({patch} px): using {snapped} px tiles.")
    return snapped


def _family_defaults(name: str) -> dict:
    """timm arguments SoilSSL sets per family: DINOv3 pools the CLS token, as upstream (timm
    defaults to the mean of the patch tokens there), so that DINO training continues on the
    token it was trained with.  No state-dict key depends on them."""
    return {"global_pool": "token"} if "dinov3" in name else {}


def create_model(arch: str, in_chans: int = 3, tile_size: int = 224,
                 **timm_kwargs) -> torch.nn.Module:
    """A timm ViT without classifier; ``arch`` is a timm name, optionally with arguments
    (``name:depth=2,embed_dim=64``); ``timm_kwargs`` go to ``timm.create_model`` too (e.g.
    ``dynamic_img_size=True`` for multi-crop training, ``drop_path_rate``); they change no
    state-dict key, so the weights load into a model built without them."""
    import timm
    name, arch_kwargs = parse_arch(arch)
    kwargs = {**_family_defaults(name), **arch_kwargs, **timm_kwargs}
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans,
                                 img_size=tile_size, **kwargs)
    except RuntimeError as exc:
        raise BackboneError(f"Unknown architecture '{arch}': use a timm ViT name such as "
                            f"vit_small_patch16_224, vit_small_patch14_reg4_dinov2 or "
                            f"vit_small_patch16_dinov3 ({exc}).") from exc
    except (TypeError, ValueError, AssertionError) as exc:
        raise BackboneError(f"'{arch}' is not a ViT timm can build with in_chans/img_size: "
                            f"{exc}") from exc


def filter_state_dict(sd: dict, model: torch.nn.Module) -> dict:
    """The model family's own timm ``checkpoint_filter_fn`` (ViT, DINOv2 and Meta's files,
    EVA/DINOv3...): resamples the position embedding, renames upstream keys."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        from timm.models.vision_transformer import checkpoint_filter_fn as fn
    return fn(sd, model)


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
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a known architecture with an unknown tag
        return None
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
                  progress: Optional[Progress] = None, **timm_kwargs) -> Backbone:
    """Build a timm ViT (``num_classes=0``) with weights from ``spec``.

    ``arch``/``in_chans``/``tile_size`` default to what the checkpoint says
    (SoilSSL files) or can be inferred; given explicitly they must agree with
    it, except that extra channels are cloned from R and the position
    embedding is resampled to ``tile_size`` (snapped to a multiple of the patch
    size, with a message to ``progress``).  ``timm_kwargs`` go to
    :func:`create_model` (pretraining builds with ``dynamic_img_size=True``).
    """
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
                    f"weights while it runs: fetch it once with Download a backbone "
                    f"(soilssl:downloadbackbone), or give the weights file's path as BACKBONE.")
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
        raise ArchUnknown(
            f"The backbone file '{os.path.basename(str(spec))}' does not name its architecture and it cannot be inferred "
            f"({describe_weights(sd)}): set ARCH, a timm ViT name such as "
            f"vit_small_patch16_224, vit_small_patch14_reg4_dinov2 or vit_small_patch16_dinov3, "
            f"with timm arguments for other sizes (name:depth=2,embed_dim=64,num_heads=2).")
    ck_chans = info.get("in_chans") or (int(sd["patch_embed.proj.weight"].shape[1])
                                        if sd is not None and "patch_embed.proj.weight" in sd else 3)
    in_chans = int(in_chans or ck_chans)
    tile_size = int(tile_size or info.get("tile_size") or 224)
    patch = arch_patch_size(arch)
    if patch:
        tile_size = snap_tile(tile_size, patch, progress)
    model = create_model(arch, in_chans, tile_size, **timm_kwargs)
    if tile_size % model_patch_size(model):  # a name without its patch size
        tile_size = snap_tile(tile_size, model_patch_size(model), progress)
        model = create_model(arch, in_chans, tile_size, **timm_kwargs)
    if sd is not None:
        sd = clone_channels(sd, in_chans)
        want = int(model.num_features)
        have = int(sd["patch_embed.proj.weight"].shape[0]) if "patch_embed.proj.weight" in sd \
            else want
        if have != want:
            raise BackboneError(
                f"Architecture mismatch: '{arch}' expects embedding dimension {want} but the "
                f"weights have {have} (found "
                f"{infer_arch(sd) or 'a non-standard ViT: ' + describe_weights(sd)}). "
                f"Set ARCH accordingly.")
        try:
            sd = filter_state_dict(sd, model)
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BackboneError(f"The weights do not fit '{arch}': {str(exc)[:500]}") from exc
        missing = [k for k in missing if not k.startswith("head")]
        unexpected = [k for k in unexpected if not k.startswith("head")]
        if missing or unexpected:
            raise BackboneError(
                f"The weights do not fit '{arch}' ({describe_weights(sd)}): expected keys "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                f"found {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.")
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


# ---------------------------------------------------------------------------- comparison

def parse_backbone_list(text) -> list:
    """Backbones to compare from ``a.pth;b.safetensors;random:vit_small_patch16_224`` (also
    newlines) or a list: the non-empty entries, in order."""
    items = text if isinstance(text, (list, tuple)) else re.split(r"[;\n]", str(text or ""))
    return [str(t).strip() for t in items if str(t).strip()]


def backbone_name(spec: str) -> str:
    """A short label for a compared backbone: the file name without extension, the timm
    name, or ``random:<arch>``."""
    spec = str(spec).strip()
    if spec.lower().startswith(RANDOM + ":") or spec.lower() == RANDOM:
        return spec
    if _is_pretrained_name(spec):
        return spec
    return os.path.splitext(os.path.basename(spec))[0] or spec


def load_compared(specs, arch: Optional[str] = None, in_chans: Optional[int] = None,
                  tile_size: Optional[int] = None, device: str = "cpu", seed: int = 0,
                  taken=(), progress: Optional[Progress] = None) -> dict:
    """``{label: Backbone}`` for each entry of :func:`parse_backbone_list`: a file or cached
    timm name, optionally followed by ``@<arch>`` (else ``arch`` is used for a file that
    neither names nor reveals its architecture), or ``random:<arch>`` (random
    initialisation seeded with ``seed``, without touching the global RNG: the baseline that
    shows what pretraining adds).  Labels are unique and differ from ``taken`` (the
    feature-set names already in use)."""
    out: dict = {}
    for i, spec in enumerate(parse_backbone_list(specs)):
        if progress is not None:
            progress.check()
        own_arch = None
        if "@" in spec and not spec.lower().startswith(RANDOM + ":"):
            head, tail = spec.rsplit("@", 1)
            if re.match(r"^[A-Za-z]\w*(:.*)?$", tail.strip()) and "/" not in tail and \
                    "\\" not in tail:
                spec, own_arch = head.strip(), tail.strip()
        label = backbone_name(spec)
        base, n = label, 2
        while label in out or label in taken:
            label, n = f"{base} ({n})", n + 1
        if spec.lower().startswith(RANDOM + ":"):
            rand_arch = spec.split(":", 1)[1].strip()
            if not rand_arch:
                raise BackboneError(f"'{spec}': write random:<timm name>, e.g. "
                                    f"random:vit_small_patch16_224.")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                bb = load_backbone(None, arch=rand_arch, in_chans=in_chans,
                                   tile_size=tile_size, device=device, progress=progress)
            bb.source = spec
        else:
            with torch.random.fork_rng(devices=[]):  # building a model draws initial weights
                try:
                    bb = load_backbone(spec, arch=own_arch, in_chans=in_chans,
                                       tile_size=tile_size, device=device, progress=progress)
                except ArchUnknown:
                    if not arch:
                        raise
                    bb = load_backbone(spec, arch=arch, in_chans=in_chans,
                                       tile_size=tile_size, device=device, progress=progress)
        out[label] = bb
    return out


class ArchUnknown(BackboneError):
    """A weights file that neither names nor reveals its architecture (ARCH is needed)."""
