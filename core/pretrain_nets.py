"""The networks of one DINO pretraining run (built by core/pretrain.py's run).

:func:`build_nets` makes them: the student and teacher ViT (timm, ``dynamic_img_size`` so
that local crops of another size go through), each with a :class:`~.dino.DINOHead`, the
DINO loss (its centre), the AdamW optimiser, the AMP scaler and the multi-crop
augmentation with its random generator.  A new run starts from INIT (its normalisation
when it fits, and its DINO heads when a full training checkpoint's heads fit this run);
a resumed run restores all of it from the RESUME checkpoint's train state.
:meth:`DinoNets.train_state` is what a checkpoint keeps of them.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .backbone import RANDOM, create_model, load_backbone, load_file
from .dino import (DINOHead, DINOLoss, MultiCropAugmentation, MultiCropWrapper,
                   checkpoint_heads, default_local_size, head_dims, head_fits, param_groups)
from .errors import InputError
from .progress import Progress
from .raster import Normalization, TileSource
from .ranks import Ranks


@dataclass
class DinoNets:
    """Student, teacher and what trains them; ``model`` is the student, wrapped in DDP
    when several processes train."""
    arch: str
    in_chans: int
    patch: int
    norm: Normalization
    init_source: str
    student: MultiCropWrapper
    teacher: MultiCropWrapper
    model: torch.nn.Module
    loss_fn: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    aug: MultiCropAugmentation
    generator: torch.Generator
    head_continued: Optional[bool] = None  # INIT's DINO heads kept (new runs)

    def train_state(self, device: torch.device) -> dict:
        """The checkpoint's train state of the networks (tensors detached on the CPU): the
        student, the teacher head (the teacher backbone is the checkpoint's backbone), the
        loss centre, the optimiser, the scaler and the random states."""
        rng = {"torch": torch.get_rng_state(), "augment": self.generator.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        return {
            "student": cpu_copy(self.student.state_dict()),
            "teacher_head": cpu_copy(self.teacher.head.state_dict()),
            "dino_loss": cpu_copy(self.loss_fn.state_dict()),
            "optimizer": cpu_copy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": cpu_copy(rng),
        }


def cpu_copy(obj):
    """Deep copy of a (nested) state dict with every tensor detached on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def build_nets(cfg, source: TileSource, device: torch.device, dd: Ranks, amp: str,
               log: Progress, resumed: Optional[dict]) -> DinoNets:
    """The networks of a run with config ``cfg`` (a PretrainConfig: its ``arch``,
    ``tile_size`` and, for a new head, ``warmup_epochs`` are settled here) on ``source``'s
    channels; restored from ``resumed`` (a RESUME checkpoint) when given."""
    in_chans = source.channels
    timm_kwargs = dict(dynamic_img_size=True)
    spec = None
    if resumed is not None:
        if int(resumed.get("in_chans", in_chans)) != in_chans:
            raise InputError(
                f"RESUME was trained on {resumed.get('in_chans')} channels but the input "
                f"gives {in_chans} ({len(source.bands)} band(s)"
                f"{' + DEM' if source.dem else ''}): use the same BANDS and DEM.")
        arch = resumed["arch"]
        s_bb = create_model(arch, in_chans, cfg.tile_size,
                            drop_path_rate=cfg.drop_path_rate, **timm_kwargs)
        norm = Normalization.from_dict(resumed.get("normalization"))
        if cfg.warmup_epochs is None:  # a checkpoint from before the automatic warm-up
            cfg.warmup_epochs = 1
        source_desc = resumed.get("pretrain", {}).get("init_source", RANDOM)
    else:
        torch.manual_seed(cfg.seed)
        spec = cfg.init if cfg.init and str(cfg.init).lower() != RANDOM else None
        bb = load_backbone(spec, arch=cfg.arch or None, in_chans=in_chans,
                           tile_size=cfg.tile_size, device="cpu", progress=log,
                           drop_path_rate=cfg.drop_path_rate, **timm_kwargs)
        arch, s_bb = bb.arch, bb.model
        cfg.tile_size = bb.tile_size  # snapped to a multiple of the patch size
        source_desc = bb.source
        norm = Normalization.from_dict(bb.normalization)
        if norm is not None and len(norm.mean) != in_chans:
            norm = None
        if norm is None:
            log.info("Computing per-band normalisation from a sample of the raster...")
            norm = source.compute_normalization(seed=cfg.seed)
        else:
            log.info("Using the normalisation of the INIT checkpoint.")
    cfg.arch = arch
    embed_dim = int(s_bb.num_features)
    patch = int(s_bb.patch_embed.patch_size[0])
    torch.manual_seed(cfg.seed + 1)
    head_args = dict(hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim,
                     norm_last_layer=cfg.norm_last_layer)
    student = MultiCropWrapper(s_bb, DINOHead(embed_dim, cfg.out_dim, **head_args))
    # the teacher starts as a copy of the student; it runs in eval mode (no drop path)
    teacher = copy.deepcopy(student)
    local_size = cfg.local_crop_size or default_local_size(cfg.tile_size, patch)
    loss_fn = DINOLoss(cfg.out_dim, cfg.local_crops_number + 2, cfg.warmup_teacher_temp,
                       cfg.teacher_temp, cfg.warmup_teacher_temp_epochs)
    head_continued = None
    ts = resumed["train_state"] if resumed is not None else None
    if ts is None:
        head_continued = _continue_heads(cfg, spec, student, teacher, loss_fn, log)
    else:
        student.load_state_dict(ts["student"])
        # the teacher backbone is the exported backbone; its head is in the train state
        teacher.backbone.load_state_dict(resumed["backbone"])
        teacher.head.load_state_dict(ts["teacher_head"])
        loss_fn.load_state_dict(ts["dino_loss"])
    student.to(device).train()
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    loss_fn.to(device)
    # fused AdamW on a GPU: one kernel for all parameters (the foreach default launches
    # several per parameter group); same update
    optimizer = torch.optim.AdamW(
        param_groups(student), **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    generator = torch.Generator()
    if ts is not None:
        optimizer.load_state_dict(ts["optimizer"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        rng = ts.get("rng") or {}
        if torch.is_tensor(rng.get("torch")):
            torch.set_rng_state(rng["torch"])
        if torch.is_tensor(rng.get("augment")):
            generator.set_state(rng["augment"])
    model = student
    if dd.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    aug = MultiCropAugmentation(
        cfg.tile_size, source.optical_channels, cfg.local_crops_number, cfg.global_crops_scale,
        cfg.local_crops_scale, local_size=local_size, patch_size=patch)
    n_params = sum(p.numel() for p in s_bb.parameters())
    log.info(
        f"{arch} ({n_params / 1e6:.1f} M parameters, {in_chans} channels, patch "
        f"{patch}) from {source_desc}; DINO head -> {cfg.out_dim}; crops: 2 x "
        f"{cfg.tile_size} px + {cfg.local_crops_number} x {local_size} px; on {device}"
        f"{' x ' + str(dd.world) + ' processes' if dd.enabled else ''}, "
        f"AMP {amp}.")
    return DinoNets(arch, in_chans, patch, norm, source_desc, student, teacher, model, loss_fn,
                    optimizer, scaler, aug, generator, head_continued)


def _continue_heads(cfg, spec: Optional[str], student: MultiCropWrapper,
                    teacher: MultiCropWrapper, loss_fn: DINOLoss, log: Progress) -> bool:
    """Continue the DINO heads (and loss centre) of a full training checkpoint given as
    INIT when their dimensions fit this run; otherwise say the head is new.  Sets the
    warm-up when not given: 1 epoch for a continued head, DINO's 10 of 100 epochs scaled
    to the run for a new one (a random head's first gradients are noise: a longer
    warm-up keeps them from wrecking the pretrained backbone).  True when continued."""
    heads = None
    if spec and os.path.isfile(spec) and not spec.lower().endswith(".safetensors"):
        heads = checkpoint_heads(load_file(spec))  # read again: load_backbone drops heads
    kept = False
    if heads is None:
        reason = "INIT carries no DINO head" if spec else "random initialisation"
    elif not (head_fits(student.head, heads["student"]) and
              head_fits(teacher.head, heads["teacher"])):
        have = head_dims(heads["teacher"])
        want = head_dims(teacher.head.state_dict())
        diff = ", ".join(f"{k} {have[k]} (this run: {want[k]})" for k in want
                         if have[k] != want[k]) or "other layers"
        reason = (f"INIT's DINO head does not fit this run: {diff}; give INIT's "
                  f"dimensions (OUT_DIM; --out-dim, --hidden-dim, --bottleneck-dim on the "
                  f"command line) to continue it")
    else:
        student.head.load_state_dict(heads["student"])
        teacher.head.load_state_dict(heads["teacher"])
        center = heads["center"]
        if center is not None and tuple(center.shape) == tuple(loss_fn.center.shape):
            loss_fn.center.copy_(center)
        kept = True
    auto = cfg.warmup_epochs is None
    if auto:
        cfg.warmup_epochs = 1 if kept else max(1, math.ceil(cfg.epochs * 10 / 100))
    warmup = (f"learning-rate warm-up {cfg.warmup_epochs} epoch(s)"
              f"{'' if auto else ' (as set)'}")
    if kept:
        log.info(f"Continuing INIT's DINO heads (student and teacher, "
                 f"{head_dims(heads['teacher'])['out_dim']} outputs) and loss centre; "
                 f"{warmup}.")
    else:
        log.info(f"The DINO head is new (random weights): {reason}; {warmup}.")
    return kept
