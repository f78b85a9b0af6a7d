"""Self-supervised DINO pretraining of a timm ViT on the user's own raster.

The paper's recipe (Tresson et al. 2024): continue DINO training (Caron et
al. 2021, facebookresearch/dino ``main_dino.py``) of a ViT on tiles of the
study scene, leaving out every tile near a soil sample.

* Sampling (:func:`~.pretrain_tiles.sample_tiles`, in core/pretrain_tiles.py): tiles
  of TILE_SIZE on a :class:`TileGrid` (stride configurable); a tile whose window comes
  within BUFFER pixels of any point is excluded; tiles with less than ``min_valid``
  valid pixels are skipped.
* Each epoch reads the kept tiles through :func:`iter_batches` (threads,
  prefetch) in a seeded shuffled order; under DDP each rank reads its share
  (:class:`~torch.utils.data.DistributedSampler` over the tile list); the last
  incomplete batch is dropped, as in DINO.
* Student and teacher (:func:`~.pretrain_nets.build_nets`, in core/pretrain_nets.py):
  the same ViT (built with ``dynamic_img_size=True`` so that local crops of another size
  go through), each with a :class:`~.dino.DINOHead`; the teacher is an EMA of the
  student.
* Checkpoint (written atomically by rank 0 at the end of every epoch): a
  SoilSSL backbone checkpoint of the teacher backbone (what
  :func:`load_backbone` and feature extraction use) plus ``pretrain``
  (summary) and ``train_state`` (student, teacher head -- the teacher backbone
  is ``backbone`` itself --, optimiser, scaler, centre, RNG states, config,
  loss history), all loadable with
  ``torch.load(weights_only=True)``.
* Determinism: the random streams of epoch ``e`` on rank ``r`` are seeded from
  ``(seed, e, r)``, so a run resumed from the checkpoint of epoch ``e`` ends
  with exactly the weights of an uninterrupted run (CPU, same seed).

Command line (also under ``torchrun --nproc_per_node N`` for several GPUs)::

    python -m soilssl.core.pretrain --input scene.tif --output backbone.pth \\
        --dem dem.tif --points samples.geojson --arch vit_base_patch16_224 \\
        --init dino_vitbase16_pretrain.pth --epochs 20 --batch-size 64 --out-dim 65536
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .backbone import backbone_checkpoint, load_file, resolve_device
from .dino import cancel_last_layer_grads, clip_gradients, cosine_schedule, ema_update
from .errors import BackboneError, Cancelled, InputError, SoilSSLError, TrainingError
from .features import AMPS, autocast
from .files import atomic_save
from .progress import Progress, ensure
from .ranks import Ranks
from .pretrain_tiles import buffer_advice, sample_tiles
from .batches import iter_batches
from .pretrain_nets import build_nets
from .raster import DEFAULT_MIN_VALID, TileSource

KIND = "dino-pretrain"


def _opt(default, help: str, **cli):
    """A config field with its command-line help (``cli``: argparse overrides)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@dataclass
class PretrainConfig:
    """Everything a pretraining run needs (defaults follow DINO unless noted)."""

    input: str = _opt(None, "Input raster (GeoTIFF or any GDAL raster).", type=str)
    output: str = _opt(None, "Checkpoint file written at the end of every epoch.", type=str)
    bands: Optional[list] = _opt(None, "1-based band numbers (default: the first 3).",
                                 type=int, nargs="+")
    dem: Optional[str] = _opt(None, "Optional DEM added as an extra channel.", type=str)
    buffer: float = _opt(448.0, "Tiles within this many pixels of a point are excluded.")
    arch: Optional[str] = _opt("vit_base_patch16_224",
                               "timm ViT name (empty/None: the INIT checkpoint's).", type=str)
    init: Optional[str] = _opt(None, "Initial weights: a file, a cached timm name, a SoilSSL "
                                     "checkpoint, or None/'random'.", type=str)
    epochs: int = _opt(10, "Total number of epochs (a resumed run continues up to it).")
    batch_size: int = _opt(32, "Tiles per step and per process (DINO: 64 per GPU).")
    tile_size: int = _opt(224, "Tile (global crop) size in pixels.")
    stride: Optional[int] = _opt(None, "Grid step in pixels (default: TILE_SIZE).", type=int)
    min_valid: float = _opt(DEFAULT_MIN_VALID, "Tiles with a smaller valid fraction are "
                                               "skipped.")
    device: str = _opt("auto", "auto, cpu or cuda.")
    amp: str = _opt("auto", "Mixed precision: auto (fp16 on CUDA), none, bf16, fp16.")
    resume: Optional[str] = _opt(None, "Checkpoint of an interrupted run to continue.",
                                 type=str)
    seed: int = _opt(0, "Random seed (tile order, crops, initialisation).")
    out_dim: int = _opt(4096, "DINO head output dimension (DINO/paper: 65536; 4096 is a "
                              "small preset for CPU).")
    hidden_dim: int = _opt(2048, "DINO head hidden dimension.")
    bottleneck_dim: int = _opt(256, "DINO head bottleneck dimension.")
    norm_last_layer: bool = _opt(True, "Weight-normalise the head's last layer (norm frozen).")
    local_crops_number: int = _opt(8, "Number of local crops.")
    global_crops_scale: list = _opt([0.4, 1.0], "Area range of the 2 global crops.",
                                    type=float, nargs=2)
    local_crops_scale: list = _opt([0.05, 0.4], "Area range of the local crops.",
                                   type=float, nargs=2)
    local_crop_size: Optional[int] = _opt(None, "Local crop size (default: 96 px scaled "
                                                "to TILE_SIZE/224, on the patch grid).", type=int)
    lr: float = _opt(0.0005, "Peak learning rate for a total batch of 256 (scaled linearly).")
    min_lr: float = _opt(1e-6, "Learning rate at the end of the cosine schedule.")
    weight_decay: float = _opt(0.04, "Initial weight decay.")
    weight_decay_end: float = _opt(0.4, "Final weight decay (cosine schedule).")
    warmup_epochs: Optional[int] = _opt(
        None, "Epochs of linear learning-rate warm-up (default: 1 when the DINO head is "
              "continued from INIT; for a new head DINO's 10 of 100 epochs scaled to EPOCHS, "
              "at least 1).", type=int)
    warmup_teacher_temp: float = _opt(0.04, "Initial teacher temperature.")
    teacher_temp: float = _opt(0.04, "Teacher temperature after warm-up.")
    warmup_teacher_temp_epochs: int = _opt(0, "Epochs of teacher-temperature warm-up.")
    momentum_teacher: float = _opt(0.996, "Initial teacher EMA momentum (cosine to 1).")
    clip_grad: float = _opt(3.0, "Per-parameter gradient norm cap (0: none).")
    freeze_last_layer: int = _opt(1, "Epochs during which the head's last layer is frozen.")
    drop_path_rate: float = _opt(0.1, "Stochastic depth of the student.")
    workers: Optional[int] = _opt(None, "Tile-reading threads (default: 2 on the CPU, up to 8 "
                                        "with a GPU).", type=int)
    prefetch: int = _opt(2, "Batches read ahead.")
    log_every: int = _opt(0, "Log the loss every N steps (0: about 20 lines per epoch).")

    # fields a resumed run takes from its checkpoint (they define the training)
    RESUME_FIXED = ("arch", "init", "tile_size", "out_dim", "hidden_dim", "bottleneck_dim",
                    "norm_last_layer", "local_crops_number", "global_crops_scale",
                    "local_crops_scale", "local_crop_size", "seed", "batch_size", "lr", "min_lr",
                    "weight_decay", "weight_decay_end", "warmup_epochs", "warmup_teacher_temp",
                    "teacher_temp", "warmup_teacher_temp_epochs", "momentum_teacher",
                    "clip_grad", "freeze_last_layer", "drop_path_rate")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        if not self.input:
            raise InputError("INPUT raster is required.")
        if not self.output:
            raise InputError("OUTPUT checkpoint file is required.")
        for name in ("epochs", "batch_size", "tile_size", "out_dim", "hidden_dim",
                     "bottleneck_dim"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name.upper()} must be at least 1.")
        if self.stride is not None and int(self.stride) < 1:
            raise InputError("STRIDE must be positive.")
        if self.buffer < 0:
            raise InputError("BUFFER must be zero or positive.")
        if self.local_crops_number < 0:
            raise InputError("The number of local crops must be zero or positive.")
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise InputError(f"{name} must be two numbers 0 < min <= max <= 1.")
        if not 0 <= self.min_valid <= 1:
            raise InputError("min_valid must be between 0 and 1.")
        if self.seed < 0:
            raise InputError("SEED must be zero or positive.")
        if self.warmup_epochs is not None and int(self.warmup_epochs) < 0:
            raise InputError("warmup_epochs must be zero or positive.")
        if (self.amp or "auto").lower() not in AMPS:
            raise InputError(f"Unknown AMP '{self.amp}': use one of {', '.join(AMPS)}.")
        if not 0 <= self.momentum_teacher <= 1:
            raise InputError("momentum_teacher must be between 0 and 1.")
        if self.teacher_temp <= 0 or self.warmup_teacher_temp <= 0:
            raise InputError("Teacher temperatures must be positive.")


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)])
               .generate_state(1, dtype=np.uint64)[0] % (2 ** 63 - 1))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def _load_resume(path: str) -> dict:
    try:
        obj = load_file(path)
    except BackboneError as exc:
        raise InputError(f"RESUME: {exc}") from exc
    if not (isinstance(obj, dict) and isinstance(obj.get("train_state"), dict)):
        raise InputError(
            f"RESUME '{os.path.basename(path)}' holds no training state (it is not a SoilSSL "
            f"pretraining checkpoint): give it as INIT to start a new run from its weights.")
    return obj


def _merge_resume(cfg: PretrainConfig, saved: dict, progress: Progress) -> PretrainConfig:
    old = PretrainConfig.from_dict(saved)
    d = cfg.to_dict()
    changed = []
    for name in PretrainConfig.RESUME_FIXED:
        new_v, old_v = d.get(name), getattr(old, name)
        if new_v != old_v:
            if name not in ("arch", "warmup_epochs") or new_v not in (None, ""):  # not defaults
                changed.append(f"{name}={new_v!r}->{old_v!r}")
            d[name] = old_v
    if changed:
        progress.info("Resuming: training settings come from the checkpoint (" +
                      ", ".join(changed) + ").")
    return PretrainConfig.from_dict(d)


def _amp_mode(cfg: PretrainConfig, device: torch.device) -> str:
    amp = (cfg.amp or "auto").lower()
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    return amp


def pretrain(config: PretrainConfig, points_xy=None, points_crs=None,
             progress: Optional[Progress] = None) -> dict:
    """Run (or resume) DINO pretraining; returns a summary dict.

    ``points_xy``: optional (xs, ys) coordinate arrays (or an (N, 2) array) of
    the soil samples, in ``points_crs`` (default the raster's); tiles within
    ``config.buffer`` pixels of them are excluded.  Raises :class:`Cancelled`
    when ``progress`` asks to stop (after the current step; the checkpoint of
    the last complete epoch stays), :class:`TrainingError` on a non-finite
    loss, :class:`InputError`/:class:`BackboneError` on bad inputs.
    """
    progress = ensure(progress)
    cfg = PretrainConfig.from_dict(config.to_dict())
    cfg.validate()
    device = resolve_device(cfg.device)
    dd = Ranks.join(device)
    if device.type == "cuda" and dd.enabled:
        device = torch.device("cuda", dd.local_rank)
    # only rank 0 talks to the user; cancel requests are shared with every rank
    log = progress if dd.rank == 0 else Progress()
    source = None
    try:
        resumed = None
        if cfg.resume:
            resumed = _load_resume(cfg.resume)
            cfg = _merge_resume(cfg, resumed["train_state"].get("config", {}), log)
        source = TileSource(cfg.input, cfg.bands, cfg.dem)
        if cfg.tile_size > max(source.width, source.height):
            raise InputError(
                f"TILE_SIZE {cfg.tile_size} px is larger than the raster ({source.width} x "
                f"{source.height} px): use a smaller TILE_SIZE.")
        run = _Run(cfg, source, dd, device, log, progress)
        run.build(resumed)
        run.sample(points_xy, points_crs)
        return run.train()
    finally:
        if source is not None:
            source.close()
        dd.close()


class _Run:
    """State of one pretraining run (built by :func:`pretrain`)."""

    def __init__(self, cfg: PretrainConfig, source: TileSource, dd: Ranks,
                 device: torch.device, log: Progress, progress: Progress):
        self.cfg, self.source, self.dd, self.device = cfg, source, dd, device
        self.log, self.progress = log, progress
        self.amp = _amp_mode(cfg, device)
        self.history: list = []
        self.step_losses: list = []
        self.start_epoch = 0

    # -- models -----------------------------------------------------------------
    def build(self, resumed: Optional[dict]) -> None:
        """The networks (:func:`~.pretrain_nets.build_nets`) and, resuming, where the
        loop stopped."""
        self.nets = build_nets(self.cfg, self.source, self.device, self.dd, self.amp, self.log,
                               resumed)
        if resumed is not None:
            ts = resumed["train_state"]
            self.start_epoch = int(ts["epoch"])
            self.history = [float(v) for v in ts.get("loss_history", [])]
            sl = ts.get("step_losses")
            self.step_losses = sl.tolist() if torch.is_tensor(sl) else list(sl or [])

    # -- tiles ------------------------------------------------------------------
    def sample(self, points_xy, points_crs) -> None:
        cfg, src = self.cfg, self.source
        cols = rows = None
        if points_xy is not None:
            xy = points_xy
            if isinstance(xy, np.ndarray) and xy.ndim == 2 and xy.shape[1] == 2:
                xs, ys = xy[:, 0], xy[:, 1]
            else:
                xs, ys = xy
            xs, ys = np.asarray(xs, float), np.asarray(ys, float)
            if len(xs):
                cols, rows = src.points_to_pixels(xs, ys, points_crs)
        self.log.info("Selecting tiles (grid, point buffer, nodata)...")
        self.tiles = sample_tiles(src, cfg.tile_size, cfg.stride, cols, rows, cfg.buffer,
                                  cfg.min_valid, cfg.workers, max(cfg.batch_size, 32),
                                  self.dd.rank, self.dd.world, self.progress.sub(0.0, 0.05))
        c = self.tiles.counts()
        pixel = max(src.pixel_size)
        self.log.info(
            f"Tiles of {cfg.tile_size} px every {self.tiles.grid.stride} px: {c['total']} on the "
            f"grid, {c['kept']} kept, {c['excluded_buffer']} excluded within {cfg.buffer:g} px "
            f"({cfg.buffer * pixel:g} m at {pixel:g} m pixels) of {c['points']} point(s), "
            f"{c['skipped_nodata']} skipped as nodata (valid < {cfg.min_valid:g}).")
        n = c["kept"]
        if n == 0 and c["excluded_buffer"] and cols is not None:
            raise InputError(
                f"No tile is left to train on: {c['excluded_buffer']} of the {c['total']} "
                f"tiles lie within BUFFER of a soil point. " +
                buffer_advice(src.width, src.height, cfg.tile_size, self.tiles.grid.stride, cols,
                              rows, cfg.buffer, cfg.batch_size, pixel))
        if n == 0:
            raise InputError("No tile is left to train on: lower BUFFER or TILE_SIZE, or check "
                             "the nodata of the input.")
        per_rank = math.ceil(n / self.dd.world)
        if per_rank < cfg.batch_size:
            each = " per process" if self.dd.enabled else ""
            self.log.info(f"Only {n} tile(s) to train on: BATCH_SIZE lowered from "
                          f"{cfg.batch_size} to {per_rank}{each} (a smaller STRIDE or TILE_SIZE "
                          f"gives more tiles).")
            cfg.batch_size = per_rank
        self.niter = per_rank // cfg.batch_size

    # -- schedules ----------------------------------------------------------------
    def _schedules(self) -> None:
        cfg, niter = self.cfg, self.niter
        total_batch = cfg.batch_size * self.dd.world
        self.lr_schedule = cosine_schedule(cfg.lr * total_batch / 256.0, cfg.min_lr, cfg.epochs,
                                           niter, warmup_epochs=cfg.warmup_epochs)
        self.wd_schedule = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs,
                                           niter)
        self.momentum_schedule = cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, niter)

    # -- checkpoint ------------------------------------------------------------------
    def checkpoint(self, epoch_done: int) -> dict:
        cfg, nets = self.cfg, self.nets
        train_state = {
            "epoch": int(epoch_done),
            **nets.train_state(self.device),
            "config": cfg.to_dict(),
            "loss_history": [float(v) for v in self.history],
            "step_losses": torch.tensor(self.step_losses, dtype=torch.float32),
            "world_size": int(self.dd.world),
            "steps_per_epoch": int(self.niter),
        }
        info = {"kind": KIND, "epoch": int(epoch_done), "epochs": int(cfg.epochs),
                "loss_history": [float(v) for v in self.history],
                "tiles": self.tiles.counts(), "buffer": float(cfg.buffer),
                "stride": int(self.tiles.grid.stride), "input": self.source.describe(),
                "init_source": str(nets.init_source), "config": cfg.to_dict(),
                "world_size": int(self.dd.world), "steps_per_epoch": int(self.niter)}
        return backbone_checkpoint(nets.teacher.backbone, nets.arch, nets.in_chans,
                                   cfg.tile_size, nets.norm.to_dict(), pretrain=info,
                                   train_state=train_state)

    def save(self, epoch_done: int) -> None:
        if self.dd.rank == 0:
            atomic_save(self.checkpoint(epoch_done), self.cfg.output)
        self.dd.barrier()

    # -- loop --------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, dd = self.cfg, self.dd
        self._schedules()
        n_tiles = len(self.tiles.indices)
        sampler = torch.utils.data.DistributedSampler(
            range(n_tiles), num_replicas=dd.world, rank=dd.rank, shuffle=True,
            seed=cfg.seed, drop_last=False)
        niter, bs = self.niter, cfg.batch_size
        log_every = cfg.log_every or max(1, niter // 20)
        prog = self.progress.sub(0.05, 1.0)
        if self.start_epoch >= cfg.epochs:
            self.log.info(f"The checkpoint has already {self.start_epoch} epoch(s) of "
                          f"{cfg.epochs}: nothing to train.")
            if os.path.abspath(cfg.output) != os.path.abspath(cfg.resume or ""):
                self.save(self.start_epoch)
            return self._summary(0, 0.0)
        if self.start_epoch:
            self.log.info(f"Resuming after epoch {self.start_epoch} of {cfg.epochs}.")
        steps_todo = (cfg.epochs - self.start_epoch) * niter
        steps_done, train_time = 0, 0.0
        stats = torch.zeros(2, device=self.device)
        for epoch in range(self.start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            order = list(sampler)[:niter * bs]
            epoch_windows = self.tiles.windows(order)
            seed = _epoch_seed(cfg.seed, epoch, dd.rank)
            torch.manual_seed(seed)
            self.nets.generator.manual_seed(seed ^ 0x5EED)
            epoch_losses = []
            t_epoch = time.perf_counter()
            batches = iter_batches(self.source, epoch_windows, self.nets.norm, bs, cfg.workers,
                                   cfg.prefetch, pin=self.device.type == "cuda")
            for step, (_, batch, _) in enumerate(batches):
                it = epoch * niter + step
                loss, cancel = self._step(batch, epoch, it, stats)
                steps_done += 1
                epoch_losses.append(loss)
                self.step_losses.append(loss)
                prog.set(steps_done / steps_todo)
                if (step + 1) % log_every == 0 or step + 1 == niter:
                    elapsed = train_time + time.perf_counter() - t_epoch
                    rate = steps_done / max(elapsed, 1e-9)
                    self.log.info(
                        f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{niter}: loss "
                        f"{loss:.4f}, lr {self.lr_schedule[it]:.2e}, wd "
                        f"{self.wd_schedule[it]:.3f}, momentum {self.momentum_schedule[it]:.4f}, "
                        f"{rate:.2f} steps/s, {rate * bs * dd.world:.1f} tiles/s")
                if cancel:
                    kept = self._kept(epoch)
                    raise Cancelled(f"Cancelled during epoch {epoch + 1} after step {step + 1}: "
                                    f"{kept}.")
            train_time += time.perf_counter() - t_epoch  # reading included, saving not
            mean = float(np.mean(epoch_losses))
            self.history.append(mean)
            self.save(epoch + 1)
            self.log.info(f"Epoch {epoch + 1}/{cfg.epochs}: mean loss {mean:.4f} "
                          f"({time.perf_counter() - t_epoch:.1f} s); checkpoint written to "
                          f"'{cfg.output}'.")
        return self._summary(steps_done, train_time)

    def _step(self, batch: np.ndarray, epoch: int, it: int, stats: torch.Tensor) -> tuple:
        cfg = self.cfg
        for i, group in enumerate(self.nets.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])
            if i == 0:  # only the first group is regularised
                group["weight_decay"] = float(self.wd_schedule[it])
        x = torch.from_numpy(batch)
        if self.device.type == "cuda":
            x = (x if x.is_pinned() else x.pin_memory()).to(self.device, non_blocking=True)
        crops = self.nets.aug(x, self.nets.generator)
        with autocast(self.device, self.amp):
            with torch.no_grad():
                teacher_out = self.nets.teacher(crops[:2])
            student_out = self.nets.model(crops)
        loss = self.nets.loss_fn(student_out, teacher_out, epoch)
        stats[0] = loss.detach().float()
        stats[1] = 1.0 if self.progress.cancelled() else 0.0
        if self.dd.enabled:
            dist.all_reduce(stats)
            stats[0] /= self.dd.world
        value, cancel = stats.tolist()
        if not math.isfinite(value):
            kept = self._kept(epoch)
            raise TrainingError(
                f"Training diverged: the loss is {value} at epoch {epoch + 1}, step "
                f"{it - epoch * self.niter + 1}; {kept}. Lower the learning rate, lengthen the "
                f"warm-up, lower clip_grad or turn AMP off, then RESUME from that checkpoint.")
        self.nets.optimizer.zero_grad(set_to_none=True)
        if self.nets.scaler is None:
            loss.backward()
            if cfg.clip_grad:
                clip_gradients(self.nets.student, cfg.clip_grad)
            cancel_last_layer_grads(epoch, self.nets.student, cfg.freeze_last_layer)
            self.nets.optimizer.step()
        else:
            self.nets.scaler.scale(loss).backward()
            if cfg.clip_grad:
                self.nets.scaler.unscale_(self.nets.optimizer)
                clip_gradients(self.nets.student, cfg.clip_grad)
            cancel_last_layer_grads(epoch, self.nets.student, cfg.freeze_last_layer)
            self.nets.scaler.step(self.nets.optimizer)
            self.nets.scaler.update()
        ema_update(self.nets.student, self.nets.teacher, float(self.momentum_schedule[it]))
        return value, bool(cancel)

    def _kept(self, epoch: int) -> str:
        """Where the last complete epoch's checkpoint is, for messages."""
        if epoch == 0:
            return "no checkpoint was written"
        path = self.cfg.output
        if epoch == self.start_epoch and self.cfg.resume:
            path = self.cfg.resume  # nothing written yet in this run
        return f"the checkpoint of epoch {epoch} is kept in '{path}'"

    def _summary(self, steps: int, seconds: float) -> dict:
        bs, world = self.cfg.batch_size, self.dd.world
        rate = steps / seconds if seconds > 0 else 0.0
        return {"output": os.path.abspath(self.cfg.output), "arch": self.nets.arch,
                "in_chans": self.nets.in_chans, "tile_size": self.cfg.tile_size,
                "epochs": self.cfg.epochs, "start_epoch": self.start_epoch,
                "steps": steps, "steps_per_epoch": self.niter, "world_size": world,
                "device": str(self.device), "amp": self.amp, "tiles": self.tiles.counts(),
                "head_continued": self.nets.head_continued,
                "warmup_epochs": int(self.cfg.warmup_epochs),
                "loss_history": list(self.history),
                "final_loss": self.history[-1] if self.history else None,
                "train_seconds": seconds, "steps_per_s": rate,
                "tiles_per_s": rate * bs * world,
                "crops_per_s": rate * bs * world * (2 + self.cfg.local_crops_number)}


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def read_points(path: str, x_field: Optional[str] = None, y_field: Optional[str] = None):
    """-> (xs, ys, crs or None) from a GeoJSON (Point/MultiPoint) or CSV file."""
    if not os.path.isfile(path):
        raise InputError(f"Points file '{path}' does not exist.")
    xs, ys = [], []
    if path.lower().endswith((".geojson", ".json")):
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        crs = ((obj.get("crs") or {}).get("properties") or {}).get("name") or "EPSG:4326"
        feats = obj.get("features", [obj] if obj.get("type") == "Feature" else [])
        for ft in feats:
            geom = ft.get("geometry") or {}
            coords = geom.get("coordinates")
            if geom.get("type") == "Point" and coords:
                coords = [coords]
            elif geom.get("type") != "MultiPoint" or not coords:
                continue
            for c in coords:
                xs.append(float(c[0]))
                ys.append(float(c[1]))
        return np.asarray(xs), np.asarray(ys), crs
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = {n.lower(): n for n in reader.fieldnames or []}
        xf = x_field or next((names[n] for n in ("x", "lon", "longitude", "easting")
                              if n in names), None)
        yf = y_field or next((names[n] for n in ("y", "lat", "latitude", "northing")
                              if n in names), None)
        if xf is None or yf is None:
            raise InputError(f"'{path}': name the coordinate columns with --points-x/--points-y.")
        for row in reader:
            try:
                xs.append(float(row[xf]))
                ys.append(float(row[yf]))
            except (TypeError, ValueError):
                continue
    return np.asarray(xs), np.asarray(ys), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m soilssl.core.pretrain",
        description="DINO self-supervised pretraining of a ViT on a raster (SoilSSL). Runs on "
                    "CPU or CUDA, and on several GPUs under `torchrun --nproc_per_node N`. The "
                    "checkpoint is a BACKBONE for the SoilSSL QGIS tools.")
    for f in fields(PretrainConfig):
        meta = dict(f.metadata)
        help_ = meta.pop("help", "")
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, default=default, action=argparse.BooleanOptionalAction,
                           help=help_)
            continue
        kwargs = {"type": type(default)} if default is not None else {}
        kwargs.update(meta)
        p.add_argument(flag, default=default, help=f"{help_} (default: {default})", **kwargs)
    p.add_argument("--points", help="Soil samples (GeoJSON or CSV): tiles within BUFFER px of "
                                    "them are left out.")
    p.add_argument("--points-crs", help="CRS of the points (default: GeoJSON's, EPSG:4326, or "
                                        "the raster's for CSV).")
    p.add_argument("--points-x", help="CSV column of x/longitude.")
    p.add_argument("--points-y", help="CSV column of y/latitude.")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig)}
    for name in ("arch", "init", "dem", "resume"):
        if values[name] in ("", "none", "None"):
            values[name] = None
    cfg = PretrainConfig(**values)
    if not cfg.input or not cfg.output:
        build_parser().error("--input and --output are required")
    rank = int(os.environ.get("RANK", "0"))
    say = (lambda m: print(m, flush=True)) if rank == 0 else None
    points_xy = crs = None
    try:
        if args.points:
            xs, ys, crs = read_points(args.points, args.points_x, args.points_y)
            crs = args.points_crs or crs
            points_xy = (xs, ys)
        summary = pretrain(cfg, points_xy, crs, Progress(on_info=say))
    except SoilSSLError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_history"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
