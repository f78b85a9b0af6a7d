"""Feature extraction and soil prediction sharded over processes (torchrun), resumable.

The output grid is cut into *blocks* of ``block_rows`` grid rows (rows of tiles: one
output row each for tile features, ``core`` rows for patch features).  Rank ``r`` of
``world`` computes blocks ``r, r + world, ...``; each block is written as its own small
GeoTIFF per product (``<work>/b000012.<product>.tif``, atomically) and then a done marker
(``b000012.done``: the sha256 of each part).  A run that is killed leaves finished blocks
with their markers; rerun with the same arguments, it checks them and computes only the
others.  When every rank is done (a barrier on the process group: gloo on CPU, NCCL on
GPUs), rank 0 assembles the parts into one tiled, deflate-compressed GeoTIFF per product
(BigTIFF when it could pass 4 GB), written beside the output and renamed at the end, and
removes the work folder.  ``<work>/run.json`` records what the run computes; a rerun with
other settings is refused instead of mixing blocks.

Every rank reads the input and writes parts itself: with several machines, the input, the
backbone/model and the output folder must be on a shared file system.

Command line::

    python -m soilssl.core.distributed features --input scene.tif --backbone vit.pth \\
        --output features.tif [--pool cls|mean|patch] [--tile-size 224] [--stride 224]
    python -m soilssl.core.distributed predict --input scene.tif --model soil.pth \\
        --output soil.tif [--uncertainty std.tif] [--aoa aoa.tif]
    torchrun --nproc_per_node 8 -m soilssl.core.distributed features ...   # 8 GPUs
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from .backbone import file_sha256, load_backbone, resolve_device
from .errors import InputError, SoilSSLError
from .features import AMPS, POOLS, PATCH, prepare
from .files import atomic_write_text, discard
from .patches import FeatureRows
from .progress import Progress, ensure
from .ranks import Ranks
from .raster import DEFAULT_MIN_VALID, TileSource
from .writer import RasterWriter, commit_all

KINDS = ("features", "predict")
ASSEMBLE_CHUNK = 256 << 20  # bytes of one window copied during assembly


# ---------------------------------------------------------------------------
# A sharded job: feature rows -> products, block by block
# ---------------------------------------------------------------------------
@dataclass
class Product:
    path: str
    count: int
    tags: dict
    band_names: Sequence[str]
    nodata: float


@dataclass
class Job:
    """What a sharded run computes: ``rows`` (the feature rows) mapped by ``compute``
    (feats (n, D) -> one (count, n) array per product) into ``products``."""

    rows: FeatureRows
    products: List[Product]
    compute: Callable[[np.ndarray], list]
    fingerprint: dict
    blocks: Optional[Callable[[int], dict]] = None  # row -> pixel covariate blocks (predict)


def _block_units(job: Job, block: int, block_rows: int) -> range:
    return range(block * block_rows, min((block + 1) * block_rows, job.rows.units))


def _part(work: str, block: int, name: str) -> str:
    return os.path.join(work, f"b{block:06d}.{name}.tif")


def _marker(work: str, block: int) -> str:
    return os.path.join(work, f"b{block:06d}.done")


def _names(job: Job) -> list:
    return [f"p{i}" for i in range(len(job.products))]


def block_done(job: Job, work: str, block: int) -> bool:
    """Whether ``block`` has its marker and every part matches the marker's checksum."""
    try:
        with open(_marker(work, block), encoding="utf-8") as f:
            sums = json.load(f)["sha256"]
        return all(os.path.isfile(_part(work, block, n)) and
                   file_sha256(_part(work, block, n)) == sums[n] for n in _names(job))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def compute_block(job: Job, work: str, block: int, block_rows: int,
                  progress: Optional[Progress] = None) -> None:
    """Compute one block, write its parts (all or none) and then its done marker."""
    units = _block_units(job, block, block_rows)
    out_rows = job.rows.out_rows(units)
    w = job.rows.width
    data = [np.full((p.count, len(out_rows), w), p.nodata, np.float32) for p in job.products]
    for row, feats in job.rows.rows(units, progress):
        if job.blocks is not None:  # pixel covariates, cells' centres: {FEATURES: feats, ...}
            feats = {**({} if feats is None else {"features": feats}), **job.blocks(row)}
        for d, block_data in zip(data, job.compute(feats)):
            d[:, row - out_rows.start, :] = block_data
    transform = job.rows.transform() @ Affine.translation(0, out_rows.start)
    writers = [RasterWriter(_part(work, block, n), w, len(out_rows), p.count, "float32",
                            job.rows.source.crs, transform, nodata=p.nodata)
               for n, p in zip(_names(job), job.products)]
    try:
        for wr, d in zip(writers, data):
            wr.write(d, Window(0, 0, w, len(out_rows)))
        commit_all(writers)
    finally:
        for wr in writers:
            if not wr.done:
                wr.abort()
    sums = {n: file_sha256(_part(work, block, n)) for n in _names(job)}
    atomic_write_text(json.dumps({"block": block, "rows": [out_rows.start, out_rows.stop],
                                  "sha256": sums}), _marker(work, block))


def check_work_dir(job: Job, work: str, rank: int) -> None:
    """Refuse a work folder made by a run with other settings; rank 0 records this run's."""
    path = os.path.join(work, "run.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != job.fingerprint:
            diff = sorted(k for k in set(saved) | set(job.fingerprint)
                          if saved.get(k) != job.fingerprint.get(k))
            raise InputError(f"The work folder '{work}' holds blocks of another run (different "
                             f"{', '.join(diff)}): delete it or give another --work-dir.")
    elif rank == 0:
        os.makedirs(work, exist_ok=True)
        atomic_write_text(json.dumps(job.fingerprint, sort_keys=True), path)


def assemble(job: Job, work: str, n_blocks: int, block_rows: int,
             progress: Optional[Progress] = None) -> list:
    """Copy every block's parts into one tiled compressed GeoTIFF per product (band
    interleaved for many bands), window by window in bounded memory; all appear or none."""
    progress = ensure(progress)
    w, h = job.rows.width, job.rows.height
    starts = [job.rows.out_rows(_block_units(job, b, block_rows)).start for b in range(n_blocks)]
    writers = [RasterWriter(p.path, w, h, p.count, "float32", job.rows.source.crs,
                            job.rows.transform(), nodata=p.nodata, tags=p.tags,
                            band_names=p.band_names, tiled=True,
                            interleave="band" if p.count > 16 else "pixel")
               for p in job.products]
    try:
        for n, p, wr in zip(_names(job), job.products, writers):
            rows_per = 256
            cols_per = max(256, ASSEMBLE_CHUNK // (4 * p.count * rows_per) // 256 * 256)
            for r0 in range(0, h, rows_per):
                r1 = min(r0 + rows_per, h)
                blocks = [b for b in range(n_blocks)
                          if starts[b] < r1 and (b + 1 == n_blocks or starts[b + 1] > r0)]
                parts = [rasterio.open(_part(work, b, n)) for b in blocks]
                try:
                    for c0 in range(0, w, cols_per):
                        c1 = min(c0 + cols_per, w)
                        out = np.empty((p.count, r1 - r0, c1 - c0), np.float32)
                        for b, ds in zip(blocks, parts):
                            a0, a1 = max(r0, starts[b]), min(r1, starts[b] + ds.height)
                            out[:, a0 - r0:a1 - r0] = ds.read(
                                window=Window(c0, a0 - starts[b], c1 - c0, a1 - a0))
                        wr.write(out, Window(c0, r0, c1 - c0, r1 - r0))
                finally:
                    for ds in parts:
                        ds.close()
                progress.check()
        commit_all(writers)
    finally:
        for wr in writers:
            if not wr.done:
                wr.abort()
    return [p.path for p in job.products]


def run_sharded(job: Job, work: Optional[str] = None, block_rows: int = 4,
                ranks: Optional[Ranks] = None, keep_parts: bool = False,
                progress: Optional[Progress] = None) -> dict:
    """Compute this rank's blocks (skipping those already done), wait for every rank, and
    on rank 0 assemble the products.  Returns a summary (the same on every rank)."""
    progress = ensure(progress)
    ranks = ranks or Ranks()
    if block_rows < 1:
        raise InputError("--block-rows must be at least 1.")
    work = os.path.abspath(work or job.products[0].path + ".parts")
    job.fingerprint = json.loads(json.dumps(dict(job.fingerprint, block_rows=int(block_rows)),
                                            sort_keys=True))
    check_work_dir(job, work, ranks.rank)
    ranks.barrier()  # run.json exists before any rank writes a block
    n_blocks = -(-job.rows.units // block_rows)
    mine = list(range(ranks.rank, n_blocks, ranks.world))
    for b in mine:  # leftovers of a killed run (partial parts of this rank's blocks)
        discard(*glob.glob(os.path.join(work, f".b{b:06d}.*")))
    todo = [b for b in mine if not block_done(job, work, b)]
    progress.info(f"rank {ranks.rank}/{ranks.world}: {len(mine)} of {n_blocks} blocks, "
                  f"{len(mine) - len(todo)} already done, {len(todo)} to compute.")
    for i, b in enumerate(todo):
        compute_block(job, work, b, block_rows, progress)
        progress.info(f"rank {ranks.rank}: block {b} done ({i + 1}/{len(todo)}).")
    counts = ranks.gather({"rank": ranks.rank, "computed": todo,
                           "resumed": len(mine) - len(todo)})
    ranks.barrier()
    outputs = []
    if ranks.rank == 0:
        missing = [b for b in range(n_blocks) if not block_done(job, work, b)]
        if missing:
            raise SoilSSLError(f"Blocks {missing[:10]} are missing in '{work}': rerun to "
                               f"compute them.")
        progress.info(f"Assembling {n_blocks} blocks into "
                      f"{', '.join(p.path for p in job.products)}...")
        outputs = assemble(job, work, n_blocks, block_rows, progress)
        if not keep_parts:
            for path in glob.glob(os.path.join(work, "b*.*")) + [os.path.join(work, "run.json")]:
                discard(path)
            try:
                os.rmdir(work)
            except OSError:
                pass
    ranks.barrier()
    return {"outputs": outputs, "blocks": n_blocks, "world_size": ranks.world,
            "computed": sorted(b for c in counts for b in c["computed"]),
            "resumed": sum(c["resumed"] for c in counts), "width": job.rows.width,
            "height": job.rows.height, "work_dir": work}


# ---------------------------------------------------------------------------
# The two jobs
# ---------------------------------------------------------------------------
def _input_fingerprint(source: TileSource) -> dict:
    st = os.stat(source.path)
    return {"input": [os.path.abspath(source.path), st.st_size, int(st.st_mtime)],
            "bands": list(source.bands), "dem": source.dem or ""}


def features_job(source: TileSource, backbone, output: str, tile: Optional[int] = None,
                 stride: Optional[int] = None, pool: str = "cls", margin: Optional[int] = None,
                 min_valid: float = DEFAULT_MIN_VALID, device: str = "auto",
                 normalization: Optional[dict] = None, progress: Optional[Progress] = None,
                 **compute) -> Job:
    """The feature raster of :func:`~.features.extract_features` as a sharded job."""
    if pool not in POOLS + (PATCH,):
        raise InputError(f"Unknown POOL '{pool}': use one of {', '.join(POOLS + (PATCH,))}.")
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    dev = resolve_device(device)
    backbone.model.to(dev)
    rows = FeatureRows.create(source, backbone, norm, pool, tile, stride, margin, dev,
                              min_valid=min_valid, **compute)
    d = backbone.embed_dim
    product = Product(os.path.abspath(output), d, rows.tags(), [f"f{i}" for i in range(d)],
                      float("nan"))
    fp = dict(_input_fingerprint(source), kind="features", backbone=backbone.reference,
              pool=pool, tile=tile, stride=rows.grid.patch if rows.patch else rows.grid.stride,
              margin=rows.grid.margin if rows.patch else None, tags=rows.tags(),
              width=rows.width, height=rows.height, amp=compute.get("amp", "auto"))
    return Job(rows, [product], lambda feats: [feats.T], fp)


def predict_job(source: TileSource, model: dict, model_path: str, output: str,
                uncertainty: Optional[str] = None, aoa: Optional[str] = None,
                stride: Optional[int] = None, backbone=None, device: str = "auto",
                progress: Optional[Progress] = None, covariates=None, **compute) -> Job:
    """The rasters of :func:`~.soil.predict_map` as a sharded job (``covariates``: paths
    replacing the model's covariate rasters; ``backbone``: a Backbone or a path replacing
    the model's, not loaded when the map reads no ViT feature; as there)."""
    from .mapheads import PRED_NODATA, MapHeads, row_blocks
    from .soil import check_model_input, model_rows, pixel_stack
    check_model_input(source, model)
    stack = pixel_stack(source, model, covariates, progress)
    dev = resolve_device(device)
    mapper = MapHeads(model, bool(uncertainty), bool(aoa))
    rows = model_rows(source, model, mapper, backbone, stride, dev, progress, **compute)
    paths = {"prediction": output, "uncertainty": uncertainty, "aoa": aoa}
    products = [Product(os.path.abspath(paths[name]), p["count"], p["tags"], p["band_names"],
                        PRED_NODATA) for name, p in mapper.products.items()]
    fp = dict(_input_fingerprint(source), kind="predict", model=file_sha256(model_path),
              outputs=[p.path for p in products], width=rows.width, height=rows.height,
              stride=int(stride or 0), amp=compute.get("amp", "auto"),
              **({"covariates": [c.checksum.get("sha256") for c in stack.covariates]}
                 if stack else {}))
    # blocks in the order of mapper.products, as the products above
    return Job(rows, products, lambda feats: list(mapper(feats).values()), fp,
               row_blocks(stack, model, mapper, rows))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m soilssl.core.distributed",
        description="SoilSSL feature extraction and soil prediction over a large raster, "
                    "sharded across processes: run it under `torchrun --nproc_per_node N` "
                    "(one process per GPU, several nodes with --nnodes). Each rank computes "
                    "its blocks of rows; a rerun after an interruption computes only the "
                    "missing blocks; rank 0 assembles one tiled compressed GeoTIFF.")
    sub = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="Raster to map.")
    common.add_argument("--bands", default="", help="Band numbers, e.g. 4,3,2 (default: the "
                                                    "first 3; predict: the model's).")
    common.add_argument("--dem", default="", help="DEM raster added as an extra channel.")
    common.add_argument("--output", required=True, help="Output GeoTIFF.")
    common.add_argument("--stride", type=int, default=0, help="Tile step in px (0 = tile "
                                                              "size; ignored for patch).")
    common.add_argument("--device", default="auto", help="auto, cpu or cuda (each rank takes "
                                                         "GPU LOCAL_RANK).")
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--amp", default="auto", choices=AMPS)
    common.add_argument("--workers", type=int, default=2, help="Reader threads per rank.")
    common.add_argument("--block-rows", type=int, default=4,
                        help="Rows of tiles per block: the unit of work and of resuming.")
    common.add_argument("--work-dir", default="", help="Folder of the parts and done markers "
                                                       "(default: OUTPUT.parts).")
    common.add_argument("--keep-parts", action="store_true",
                        help="Keep the work folder after assembling.")
    f = sub.add_parser("features", parents=[common], help="Feature raster (extractfeatures).")
    f.add_argument("--backbone", required=True, help="Backbone checkpoint or cached timm name.")
    f.add_argument("--arch", default="", help="timm architecture when the file does not say.")
    f.add_argument("--tile-size", type=int, default=0, help="Tile size in px (0 = backbone's).")
    f.add_argument("--pool", default="cls", choices=POOLS + (PATCH,),
                   help="cls, mean, or patch (one pixel per ViT patch).")
    f.add_argument("--margin", type=int, default=-1,
                   help="POOL=patch: context patches dropped on each tile side (-1 = auto).")
    f.add_argument("--min-valid", type=float, default=DEFAULT_MIN_VALID)
    s = sub.add_parser("predict", parents=[common], help="Soil map (predictmap).")
    s.add_argument("--model", required=True, help="Model file from fitpoints.")
    s.add_argument("--backbone", default="", help="The backbone, if it moved since fitting.")
    s.add_argument("--uncertainty", default="", help="Uncertainty raster (std of fold models).")
    s.add_argument("--aoa", default="", help="Area-of-applicability raster.")
    s.add_argument("--covariates", default="", help="Replacements for the model's covariate "
                   "rasters, ;-separated, in the recorded order (default: the recorded "
                   "files).")
    return p


def _bands(text: str) -> Optional[list]:
    try:
        return [int(v) for v in text.replace(";", ",").split(",") if v.strip()] or None
    except ValueError:
        raise InputError(f"--bands must be band numbers like 4,3,2 (got '{text}').") from None


def run(args: argparse.Namespace, progress: Optional[Progress] = None) -> dict:
    progress = ensure(progress)
    # the barrier waits for the slowest rank: a day, not torch's 30 min
    ranks = Ranks.join(args.device, timeout=datetime.timedelta(days=1))
    device = args.device
    if ranks.world > 1 and resolve_device(device).type == "cuda":
        device = f"cuda:{ranks.local_rank}"
    compute = dict(batch_size=args.batch_size, amp=args.amp, workers=args.workers)
    try:
        if args.kind == "features":
            with TileSource(args.input, _bands(args.bands), args.dem or None) as src:
                bb = load_backbone(args.backbone, arch=args.arch or None, in_chans=src.channels,
                                   tile_size=args.tile_size or None, device=device)
                job = features_job(src, bb, args.output, args.tile_size or None, args.stride,
                                   args.pool, None if args.margin < 0 else args.margin,
                                   args.min_valid, device, progress=progress, **compute)
                return run_sharded(job, args.work_dir or None, args.block_rows, ranks,
                                   args.keep_parts, progress)
        from .soil import load_model
        model = load_model(args.model)
        bands = _bands(args.bands) or list(model["bands"])
        with TileSource(args.input, bands, args.dem or None) as src:
            job = predict_job(src, model, args.model, args.output, args.uncertainty or None,
                              args.aoa or None, args.stride, args.backbone or None, device,
                              progress,
                              covariates=[p for p in args.covariates.split(";") if p.strip()],
                              **compute)
            return run_sharded(job, args.work_dir or None, args.block_rows, ranks,
                               args.keep_parts, progress)
    finally:
        ranks.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    say = (lambda m: print(m, flush=True))
    try:
        summary = run(args, Progress(on_info=say))
    except SoilSSLError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
