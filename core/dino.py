"""DINO components (Caron et al. 2021), QGIS-free, following facebookresearch/dino.

* :class:`DINOHead`: 3-layer MLP (GELU) to a 256-d bottleneck, L2-normalised,
  then a weight-normalised linear layer to ``out_dim`` whose norm (``g``) is
  frozen at 1 when ``norm_last_layer``.
* :class:`MultiCropWrapper`: runs the backbone once per run of same-sized
  crops (global crops together, local crops together), concatenates the
  class tokens and applies the head once.
* :class:`DINOLoss`: cross-entropy between the sharpened, centred teacher
  distribution of each global view and the student distribution of every
  other view; the centre is an EMA of the teacher outputs (all-reduced under
  DDP); the teacher temperature is warmed up linearly over epochs.
* :func:`cosine_schedule` (learning rate with linear warm-up, weight decay,
  teacher momentum), :func:`param_groups` (no weight decay on biases and
  norms), :func:`clip_gradients` (per-parameter norm, as DINO),
  :func:`cancel_last_layer_grads`, :func:`ema_update`.
* :class:`MultiCropAugmentation`: DINO's multi-crop recipe as torch ops on
  standardised (C, H, W) tiles, adapted to overhead imagery: random resized
  crops, the 8 flips/90-degree rotations, colour jitter / grayscale / Gaussian
  blur / solarisation on the optical channels only (never on a DEM channel).

Colour operations on standardised data: the optical channels ``z`` are seen as
a pseudo-intensity ``u = 0.5 + z / 4`` (mean 0.5, std 0.25 like a natural
image in [0, 1]) and torchvision's definitions are applied in ``u`` (no
clamping): brightness ``u * f``, contrast / saturation blends with the
(mean) grey level, hue as a rotation of the chroma plane (YIQ, 3 bands only),
PIL's solarisation threshold 128/255 i.e. ``u >= 0.5 -> 1 - u``.  Every random
draw comes from a CPU :class:`torch.Generator`, so a seeded run makes the
same crops on CPU and GPU.
"""
from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------
def _weight_norm(module: nn.Module) -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm
    return weight_norm(module)


class DINOHead(nn.Module):
    """Projection head: Linear-GELU-Linear-GELU-Linear to ``bottleneck_dim``, L2 norm,
    weight-normalised Linear to ``out_dim`` (no bias)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(int(nlayers), 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = _weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad = False

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


_WEIGHT_NORM_KEYS = {"weight_g": "parametrizations.weight.original0",  # torch.nn.utils
                     "weight_v": "parametrizations.weight.original1"}  # .weight_norm (DINO)


def head_state(state: dict, prefix: str = "head.") -> Optional[dict]:
    """The :class:`DINOHead` state dict inside a student/teacher state dict, or None.

    Accepts facebookresearch/dino's keys (``module.`` from DDP, the last layer's
    ``weight_g``/``weight_v`` of the old ``weight_norm``) and SoilSSL's (parametrised
    weight norm); ``prefix=""`` for a bare head state dict."""
    if not isinstance(state, dict):
        return None
    out = {}
    for key, value in state.items():
        if not (isinstance(key, str) and torch.is_tensor(value)):
            continue
        key = re.sub(r"^module\.", "", key)
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        for old, new in _WEIGHT_NORM_KEYS.items():
            if key == "last_layer." + old:
                key = "last_layer." + new
        out[key] = value
    return out or None


def checkpoint_heads(obj) -> Optional[dict]:
    """The DINO heads a full training checkpoint carries: ``{"student", "teacher",
    "center"}`` (``center`` may be None), or None when it has no head.

    * facebookresearch/dino ``checkpoint.pth``: ``student`` (``module.head.*``),
      ``teacher`` (``head.*``), ``dino_loss`` (``center``);
    * a SoilSSL pretraining checkpoint: ``train_state`` with ``student`` (``head.*``),
      ``teacher_head`` and ``dino_loss``.
    A checkpoint with one head only gives it to both."""
    if not isinstance(obj, dict):
        return None
    ts = obj.get("train_state")
    if isinstance(ts, dict):
        student, teacher = head_state(ts.get("student")), head_state(ts.get("teacher_head"), "")
        loss = ts.get("dino_loss")
    else:
        student, teacher = head_state(obj.get("student")), head_state(obj.get("teacher"))
        loss = obj.get("dino_loss")
    if student is None and teacher is None:
        return None
    center = loss.get("center") if isinstance(loss, dict) else None
    return {"student": student or teacher, "teacher": teacher or student,
            "center": center if torch.is_tensor(center) else None}


def head_dims(state: dict) -> dict:
    """in_dim, hidden_dim, bottleneck_dim, out_dim and nlayers of a DINOHead state dict."""
    linears = sorted({int(m.group(1)) for k in state
                      for m in [re.match(r"mlp\.(\d+)\.weight$", k)] if m})
    v = state.get("last_layer." + _WEIGHT_NORM_KEYS["weight_v"])
    first = state.get(f"mlp.{linears[0]}.weight") if linears else state.get("mlp.weight")
    dims = {"in_dim": int(first.shape[1]) if first is not None else None,
            "hidden_dim": int(first.shape[0]) if first is not None and len(linears) > 1
            else None,
            "bottleneck_dim": int(v.shape[1]) if v is not None else None,
            "out_dim": int(v.shape[0]) if v is not None else None,
            "nlayers": max(1, len(linears))}
    return dims


def head_fits(head: nn.Module, state: dict) -> bool:
    """Whether ``state`` has exactly the keys and shapes of ``head``."""
    own = head.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape)
                                          for k in own)


class MultiCropWrapper(nn.Module):
    """``backbone`` (a timm ViT with ``num_classes=0``: forward gives the class token)
    followed by ``head``, run on a list of crops grouped by consecutive size."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops) -> torch.Tensor:
        if torch.is_tensor(crops):
            crops = [crops]
        outputs = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            out = self.backbone(torch.cat(crops[start:end]))
            if isinstance(out, tuple):
                out = out[0]
            outputs.append(out)
            start = end
        return self.head(torch.cat(outputs))


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------
def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINO's schedule: ``linspace(warmup_temp, temp, warmup_epochs)`` then ``temp``."""
    warmup_epochs = int(warmup_epochs)
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1))


class DINOLoss(nn.Module):
    """Cross-entropy between teacher (2 global views) and student (all views) outputs.

    ``student_output`` is (ncrops * B, K) in crop-major order (as the wrapper
    returns it), ``teacher_output`` (2 * B, K).  Pairs where student and teacher
    see the same view are skipped; the centre is updated after the loss.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0,
                 student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.ncrops = int(ncrops)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.register_buffer("center", torch.zeros(1, int(out_dim)))

    def temperature(self, epoch: int) -> float:
        return teacher_temperature(epoch, self.warmup_teacher_temp, self.teacher_temp,
                                   self.warmup_teacher_temp_epochs)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                epoch: int) -> torch.Tensor:
        b = teacher_output.shape[0] // 2
        if teacher_output.shape[0] != 2 * b or student_output.shape[0] != self.ncrops * b:
            raise ValueError(f"DINOLoss expects 2 x B teacher and {self.ncrops} x B student rows, "
                             f"got {teacher_output.shape[0]} and {student_output.shape[0]}.")
        log_p = F.log_softmax(student_output.float() / self.student_temp, dim=-1)
        log_p = log_p.view(self.ncrops, b, -1)
        temp = self.temperature(epoch)
        q = F.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach()
        q = q.view(2, b, -1)
        # sum over student views v != iq of H(q_iq, p_v) = q_iq . (sum_v log p_v - log p_iq)
        all_views = log_p.sum(dim=0)
        total = student_output.new_zeros((), dtype=torch.float32)
        for iq in range(2):
            total = total + torch.sum(-q[iq] * (all_views - log_p[iq]), dim=-1).mean()
        total = total / (2 * (self.ncrops - 1))
        self.update_center(teacher_output)
        return total

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = teacher_output.float().sum(dim=0, keepdim=True)
        n = teacher_output.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            n = n * dist.get_world_size()
        batch_center = batch_center / n
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


# ---------------------------------------------------------------------------
# Optimisation helpers
# ---------------------------------------------------------------------------
def cosine_schedule(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up from ``start_warmup_value`` over
    ``warmup_epochs`` (capped at the run's length), then a half cosine from
    ``base_value`` to ``final_value``."""
    total = int(epochs) * int(niter_per_ep)
    warmup_iters = min(int(warmup_epochs) * int(niter_per_ep), total)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters else \
        np.array([])
    iters = np.arange(total - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / max(len(iters), 1)))
    out = np.concatenate((warmup, cosine))
    assert len(out) == total
    return out


def param_groups(model: nn.Module) -> list:
    """Two AdamW groups: weights (decayed), biases and 1-D norm parameters (not)."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or p.ndim == 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm is capped at ``clip``.  The norms
    come from one fused call and one kernel scales them (not four kernels per parameter:
    on a GPU the per-parameter loop is launch-bound)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads, 2)])
    coef = torch.clamp(clip / (norms + 1e-6), max=1.0)
    torch._foreach_mul_(grads, [c.to(g.dtype) for c, g in zip(coef.unbind(), grads)])


def cancel_last_layer_grads(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the gradient of the head's last layer during the first epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter."""
    s_params = list(student.parameters())
    t_params = list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError("Student and teacher have different parameter lists.")
    # one fused call per parameter list (not two kernels per tensor): on a GPU the
    # per-tensor loop is launch-bound (~300 launches for a ViT-S)
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)


# ---------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ (NTSC): hue is a rotation of the (I, Q) plane
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.595716, -0.274453, -0.321263],
                         [0.211456, -0.522591, 0.311135]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def default_local_size(tile_size: int, patch_size: int = 16) -> int:
    """DINO's 96 px local crops for 224 px tiles, scaled to the tile, on the patch grid."""
    size = int(round(tile_size * 96 / 224 / patch_size)) * patch_size
    return int(max(patch_size, min(size, tile_size)))


class MultiCropAugmentation:
    """DINO multi-crop views of a batch of standardised tiles.

    ``__call__(batch (B,C,T,T), generator)`` returns ``2 + local_crops_number``
    tensors: two global crops (B,C,G,G) then the local crops (B,C,L,L).  As in
    DINO: global view 1 always blurred, global view 2 blurred with p=0.1 and
    solarised with p=0.2, local views blurred with p=0.5; every view flipped /
    rotated at random and colour-jittered with p=0.8 and turned grey with
    p=0.2.  Colour operations touch the first ``optical_channels`` channels only.
    Blur radii (0.1-2 px at 224 px) are scaled with the tile size.
    """

    def __init__(self, tile_size: int, optical_channels: int, local_crops_number: int = 8,
                 global_crops_scale: Sequence[float] = (0.4, 1.0),
                 local_crops_scale: Sequence[float] = (0.05, 0.4),
                 global_size: Optional[int] = None, local_size: Optional[int] = None,
                 patch_size: int = 16, jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2,
                 blur_sigma: Sequence[float] = (0.1, 2.0), batched: Optional[bool] = None):
        self.batched = batched
        self.tile_size = int(tile_size)
        self.optical = int(optical_channels)
        self.local_crops_number = int(local_crops_number)
        self.global_scale = tuple(float(v) for v in global_crops_scale)
        self.local_scale = tuple(float(v) for v in local_crops_scale)
        self.global_size = int(global_size or tile_size)
        self.local_size = int(local_size or default_local_size(tile_size, patch_size))
        self.jitter = tuple(float(v) for v in jitter)
        self.jitter_p = float(jitter_p)
        self.grayscale_p = float(grayscale_p)
        s = self.tile_size / 224.0
        self.blur_sigma = (blur_sigma[0] * s, blur_sigma[1] * s)

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number

    # -- random helpers (CPU generator: same draws whatever the device) --------
    @staticmethod
    def _rand(g: torch.Generator) -> float:
        return float(torch.rand((), generator=g))

    def _uniform(self, g, lo, hi) -> float:
        return lo + (hi - lo) * self._rand(g)

    @staticmethod
    def _randint(g, low: int, high: int) -> int:
        """Integer in [low, high)."""
        return int(torch.randint(low, high, (), generator=g))

    # -- geometric ---------------------------------------------------------------
    def crop_params(self, g, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)) -> tuple:
        """torchvision RandomResizedCrop.get_params: (top, left, h, w)."""
        area = height * width
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * self._uniform(g, scale[0], scale[1])
            aspect = math.exp(self._uniform(g, *log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return self._randint(g, 0, height - h + 1), self._randint(g, 0, width - w + 1), h, w
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    @staticmethod
    def resized_crop(x: torch.Tensor, top: int, left: int, h: int, w: int, size: int):
        patch = x[:, top:top + h, left:left + w]
        if h == size and w == size:
            return patch.clone()
        return F.interpolate(patch[None], size=(size, size), mode="bicubic", align_corners=False,
                             antialias=True)[0]

    # -- colour (optical channels, standardised values) -------------------------
    def _gray(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] == 3:
            w = torch.tensor(_LUMA, dtype=z.dtype, device=z.device)[:, None, None]
            return (z * w).sum(0, keepdim=True)
        return z.mean(0, keepdim=True)

    def color_jitter(self, z: torch.Tensor, g) -> torch.Tensor:
        b, c, s, h = self.jitter
        order = torch.randperm(4, generator=g).tolist()
        for op in order:
            if op == 0 and b > 0:  # brightness: u * f
                f = self._uniform(g, max(0.0, 1 - b), 1 + b)
                z = f * z + 2.0 * (f - 1.0)
            elif op == 1 and c > 0:  # contrast: blend with the mean grey level
                f = self._uniform(g, max(0.0, 1 - c), 1 + c)
                z = f * z + (1 - f) * self._gray(z).mean()
            elif op == 2 and s > 0 and z.shape[0] > 1:  # saturation: blend with grey
                f = self._uniform(g, max(0.0, 1 - s), 1 + s)
                z = f * z + (1 - f) * self._gray(z)
            elif op == 3 and h > 0 and z.shape[0] == 3:  # hue: rotate the chroma plane
                theta = 2 * math.pi * self._uniform(g, -h, h)
                cos, sin = math.cos(theta), math.sin(theta)
                rot = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=torch.float64)
                m = (_YIQ2RGB @ rot @ _RGB2YIQ).to(dtype=z.dtype, device=z.device)
                z = (m @ z.reshape(3, -1)).reshape(z.shape)
        return z

    @staticmethod
    def blur_matrix(n: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
        """(n, n) matrix M with ``x @ M`` = Gaussian blur of each row (reflect padding)."""
        radius = max(1, min(int(math.ceil(3 * sigma)), n - 1))
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        out = torch.arange(n)[None, :]                      # output index
        src = out + torch.arange(-radius, radius + 1)[:, None]  # (2r+1, n) source index
        src = src.abs()                                      # reflect at 0
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # reflect at n-1
        m = torch.zeros(n, n, dtype=torch.float64)
        m.index_put_((src.reshape(-1), out.expand_as(src).reshape(-1)),
                     k[:, None].expand_as(src).reshape(-1), accumulate=True)
        return m.to(dtype=dtype, device=device)

    def gaussian_blur(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        """Separable Gaussian blur (as two matrix products) of (C, H, W)."""
        h, w = z.shape[-2:]
        mw = self.blur_matrix(w, sigma, z.dtype, z.device)
        mh = mw if h == w else self.blur_matrix(h, sigma, z.dtype, z.device)
        return mh.T @ (z @ mw)

    @staticmethod
    def solarize(z: torch.Tensor) -> torch.Tensor:
        return torch.where(z >= 0, -z, z)  # u >= 0.5 -> 1 - u

    # -- one view ------------------------------------------------------------------
    def view(self, x: torch.Tensor, g, size: int, scale, blur_p: float,
             solarize_p: float) -> torch.Tensor:
        top, left, h, w = self.crop_params(g, x.shape[-2], x.shape[-1], scale)
        v = self.resized_crop(x, top, left, h, w, size)
        k = self._randint(g, 0, 4)
        if k:
            v = torch.rot90(v, k, dims=(-2, -1))
        if self._rand(g) < 0.5:
            v = torch.flip(v, dims=(-1,))
        if self.optical > 0:
            z = v[:self.optical]
            if self._rand(g) < self.jitter_p:
                z = self.color_jitter(z, g)
            if self._rand(g) < self.grayscale_p:
                z = self._gray(z).expand_as(z)
            if blur_p > 0 and self._rand(g) <= blur_p:
                z = self.gaussian_blur(z, self._uniform(g, *self.blur_sigma))
            if solarize_p > 0 and self._rand(g) < solarize_p:
                z = self.solarize(z)
            v = torch.cat([z, v[self.optical:]], dim=0) if v.shape[0] > self.optical else z
        return v.contiguous()

    # -- a whole batch at once (the GPU path) -------------------------------------
    def crop_grid(self, g, n: int, height: int, width: int, size: int, scale,
                  ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
        """(n, 2, 3) ``affine_grid`` matrices: per tile a random resized crop, a random
        quarter turn and a random horizontal flip, the geometry :meth:`view` makes one tile
        at a time, drawn for all tiles at once (:meth:`crop_params`' 10 attempts, then its
        fallback)."""
        f64 = torch.float64
        area = height * width
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, generator=g,
                                                                         dtype=f64))
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = torch.exp(lo + (hi - lo) * torch.rand(n, 10, generator=g, dtype=f64))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.argmax(ok.to(torch.int8), dim=1)
        found = ok.any(dim=1)
        w = w.gather(1, first[:, None])[:, 0]
        h = h.gather(1, first[:, None])[:, 0]
        in_ratio = width / height  # crop_params' fallback: the whole tile, clipped to ratio
        if in_ratio < min(ratio):
            fw, fh = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            fw, fh = int(round(height * max(ratio))), height
        else:
            fw, fh = width, height
        w = torch.where(found, w, float(fw))
        h = torch.where(found, h, float(fh))
        top = torch.floor(torch.rand(n, generator=g, dtype=f64) * (height - h + 1))
        left = torch.floor(torch.rand(n, generator=g, dtype=f64) * (width - w + 1))
        top = torch.where(found, top, torch.floor((height - h) / 2))
        left = torch.where(found, left, torch.floor((width - w) / 2))
        k = torch.randint(0, 4, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        return self.crop_theta(top, left, h, w, k, flip, height, width)

    @staticmethod
    def crop_theta(top, left, h, w, k, flip, height: int, width: int) -> torch.Tensor:
        """(n, 2, 3) ``affine_grid`` matrices of crops (top, left, h, w: (n,) tensors, pixels),
        each turned ``k`` quarter turns (as ``torch.rot90``) then flipped left-right where
        ``flip`` (as ``torch.flip(dims=(-1,))``)."""
        f64 = torch.float64
        top, left, h, w = (torch.as_tensor(v, dtype=f64) for v in (top, left, h, w))
        k, flip = torch.as_tensor(k), torch.as_tensor(flip, dtype=torch.bool)
        n = k.shape[0]
        turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=f64)  # rot90 with k=1
        turns = torch.stack([torch.linalg.matrix_power(turn, q) for q in range(4)])[k]
        mirror = torch.ones(n, 2, dtype=f64)
        mirror[flip, 0] = -1.0
        theta = torch.zeros(n, 2, 3, dtype=f64)
        theta[:, :, :2] = torch.stack([w / width, h / height], 1)[:, :, None] * turns \
            * mirror[:, None, :]
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 2] = (2 * top + h) / height - 1
        return theta

    def blur_matrices(self, n: int, sigma: torch.Tensor, device=None) -> torch.Tensor:
        """(B, n, n) matrices, one per sigma: :meth:`blur_matrix` for a batch, built on
        ``device`` (default sigma's; a CPU sigma sizes the kernel without a device sync)."""
        b = sigma.shape[0]
        big = int(torch.clamp(torch.ceil(3 * sigma.max()), 1, n - 1))
        device = sigma.device if device is None else torch.device(device)
        sigma = sigma.to(device)
        radius = torch.clamp(torch.ceil(3 * sigma), 1, n - 1)
        t = torch.arange(-big, big + 1, device=device, dtype=sigma.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2) * (t.abs()[None] <= radius[:, None])
        k = k / k.sum(1, keepdim=True)                               # (B, 2R+1)
        out = torch.arange(n, device=device)[None, :]
        src = (out + torch.arange(-big, big + 1, device=device)[:, None]).abs()
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)       # (2R+1, n) reflect
        m = torch.zeros(b, n, n, device=device, dtype=sigma.dtype)
        bi = torch.arange(b, device=device)[:, None, None].expand(b, *src.shape)
        m.index_put_((bi.reshape(-1), src.expand(b, *src.shape).reshape(-1),
                      out.expand_as(src).expand(b, *src.shape).reshape(-1)),
                     k[:, :, None].expand(b, *src.shape).reshape(-1), accumulate=True)
        return m

    def _gray_batch(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1] == 3:
            w = torch.tensor(_LUMA, dtype=z.dtype, device=z.device)[None, :, None, None]
            return (z * w).sum(1, keepdim=True)
        return z.mean(1, keepdim=True)

    def color_jitter_batch(self, z: torch.Tensor, g) -> torch.Tensor:
        """:meth:`color_jitter` on (B, C, H, W): each tile its own factors and order of the
        four operations, applied with jitter_p (an operation a tile skips is the identity)."""
        n, dev, dt = z.shape[0], z.device, z.dtype
        b, c, s, h = self.jitter
        on = torch.rand(n, generator=g) < self.jitter_p
        order = torch.stack([torch.randperm(4, generator=g) for _ in range(n)])  # (B, 4)

        def factor(v):  # uniform in [max(0, 1 - v), 1 + v], as color_jitter draws it
            lo = max(0.0, 1 - v)
            return lo + (1 + v - lo) * torch.rand(n, generator=g, dtype=torch.float64)
        fb, fc, fs = factor(b), factor(c), factor(s)
        theta = 2 * math.pi * h * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
        # every factor and hue matrix on the CPU first, then one copy to the device (not
        # one small copy per operation and position)
        factors = torch.stack([torch.stack([torch.where(on & (order[:, pos] == j), f, 1.0)
                                            for j, f in enumerate((fb, fc, fs))])
                               for pos in range(4)])                # (4 pos, 3 ops, B)
        th = torch.where(on[None] & (order.T == 3), theta[None], 0.0)  # (4 pos, B)
        cos, sin = torch.cos(th), torch.sin(th)
        rot = torch.zeros(4, n, 3, 3, dtype=torch.float64)
        rot[..., 0, 0] = 1
        rot[..., 1, 1], rot[..., 1, 2], rot[..., 2, 1], rot[..., 2, 2] = cos, -sin, sin, cos
        hue = _YIQ2RGB @ rot @ _RGB2YIQ                                 # (4 pos, B, 3, 3)
        factors, hue = factors.to(dev, dt), hue.to(dev, dt)
        for pos in range(4):
            if b > 0:
                f = factors[pos, 0][:, None, None, None]
                z = f * z + 2.0 * (f - 1.0)
            if c > 0:
                f = factors[pos, 1][:, None, None, None]
                z = f * z + (1 - f) * self._gray_batch(z).mean(dim=(1, 2, 3), keepdim=True)
            if s > 0 and z.shape[1] > 1:
                f = factors[pos, 2][:, None, None, None]
                z = f * z + (1 - f) * self._gray_batch(z)
            if h > 0 and z.shape[1] == 3:
                z = torch.einsum("bij,bjhw->bihw", hue[pos], z)
        return z

    def batch_view(self, x: torch.Tensor, g, size: int, scale, blur_p: float,
                   solarize_p: float) -> torch.Tensor:
        """:meth:`view` for a whole (B, C, H, W) batch on its device in a few batched
        operations: crop, resize, turn and flip in one bicubic ``grid_sample``, then the
        colour operations with per-tile factors.  The draws come from the same CPU
        generator; resizing has no antialiasing (a local crop is shrunk by at most ~1.5x)."""
        n = x.shape[0]
        theta = self.crop_grid(g, n, x.shape[-2], x.shape[-1], size, scale)
        grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], size, size],
                             align_corners=False)
        v = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        if self.optical > 0:
            z = self.color_jitter_batch(v[:, :self.optical], g)
            gray = (torch.rand(n, generator=g) < self.grayscale_p).to(x.device)
            z = torch.where(gray[:, None, None, None], self._gray_batch(z).expand_as(z), z)
            if blur_p > 0:
                blur = (torch.rand(n, generator=g) <= blur_p).to(x.device)
                lo, hi = self.blur_sigma
                sigma = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
                # sized on the CPU (no device sync), built on the device
                m = self.blur_matrices(size, sigma, x.device).to(z.dtype)[:, None]
                z = torch.where(blur[:, None, None, None], m.transpose(-1, -2) @ (z @ m), z)
            if solarize_p > 0:
                sol = (torch.rand(n, generator=g) < solarize_p).to(x.device)
                z = torch.where(sol[:, None, None, None], self.solarize(z), z)
            v = torch.cat([z, v[:, self.optical:]], dim=1) if v.shape[1] > self.optical else z
        return v.contiguous()

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> List[torch.Tensor]:
        """The views of ``batch``: tile by tile (:meth:`view`) on the CPU, in batched
        operations (:meth:`batch_view`) on a GPU, where per-tile kernels would leave it
        idle; ``batched`` (True/False) overrides that choice."""
        g = generator
        specs = [(self.global_size, self.global_scale, 1.0, 0.0),
                 (self.global_size, self.global_scale, 0.1, 0.2)]
        specs += [(self.local_size, self.local_scale, 0.5, 0.0)] * self.local_crops_number
        batched = self.batched if self.batched is not None else batch.device.type == "cuda"
        if batched:
            return [self.batch_view(batch, g, *spec) for spec in specs]
        views = [[] for _ in specs]
        for x in batch:
            for j, (size, scale, blur_p, sol_p) in enumerate(specs):
                views[j].append(self.view(x, g, size, scale, blur_p, sol_p))
        return [torch.stack(v) for v in views]
