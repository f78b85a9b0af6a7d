"""The inputs a soil model or a SoilSSL checkpoint was made from, and the ones a run uses.

A soil model (Fit soil heads on points) records the bands and the DEM of the raster it was
fitted on, a pretraining checkpoint the bands and DEM it was trained on; both carry their
tile size and normalisation.  A run that leaves BANDS or DEM empty takes the recorded
values, so the user never retypes what the file already knows; a run that gives other
values is refused with both in the message.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .errors import InputError
from .progress import Progress, ensure


@dataclass
class RecordedInputs:
    what: str                       # "The model" / "The checkpoint": the subject of messages
    bands: Optional[List[int]]      # None: not recorded
    dem: Optional[bool]             # None: not recorded
    dem_path: Optional[str] = None  # the DEM file used, when recorded
    raster: Optional[str] = None    # the image it was made from: given values that differ
    #                                 are refused only on that image (None: on any image)


def model_inputs(model: dict) -> RecordedInputs:
    """What a soil model dict (``core.soil``) records about its inputs."""
    bands = model.get("bands")
    return RecordedInputs("The model", [int(b) for b in bands] if bands else None,
                          None if model.get("dem") is None else bool(model["dem"]),
                          model.get("dem_path") or None)


def checkpoint_inputs(spec: Optional[str]) -> Optional[RecordedInputs]:
    """What a SoilSSL pretraining checkpoint records about the raster it was trained on;
    None for anything else (timm names, other checkpoints, unreadable files: the loader
    reports those).  Only the metadata is read: the file is memory-mapped, not loaded."""
    if not spec or not os.path.isfile(spec) or spec.lower().endswith(".safetensors"):
        return None
    import argparse
    import torch
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(spec, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, not a checkpoint at all: no record
        return None
    info = obj.get("pretrain") if isinstance(obj, dict) and \
        isinstance(obj.get("soilssl"), dict) else None
    src = info.get("input") if isinstance(info, dict) else None
    if not isinstance(src, dict) or not src.get("bands"):
        return None
    dem = src.get("dem") or None
    return RecordedInputs("The checkpoint", [int(b) for b in src["bands"]], dem is not None,
                          str(dem) if dem else None, str(src.get("path") or "") or None)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def resolve_inputs(recorded: Optional[RecordedInputs], bands: Optional[List[int]],
                   dem: Optional[str], progress: Optional[Progress] = None,
                   image: Optional[str] = None) -> Tuple[Optional[List[int]], Optional[str]]:
    """(bands, dem) for a run on ``image``: the given ones, or the recorded ones where none
    is given.  Raises :class:`InputError` naming both values when a given one contradicts
    the record -- for a checkpoint only on the image it was trained on (another image may
    order its bands otherwise: a given value is then used as given, with a note)."""
    if recorded is None:
        return bands, dem
    progress = ensure(progress)
    what = recorded.what
    taken = []
    other_image = bool(recorded.raster and image and not _same_file(recorded.raster, image))
    if other_image and (bands and recorded.bands and [int(b) for b in bands] != recorded.bands
                        or dem and recorded.dem is False):
        progress.info(f"{what} was made from bands {recorded.bands}"
                      f"{' + DEM' if recorded.dem else ''} of another image; BANDS/DEM as "
                      f"given are used on this one.")
        recorded = RecordedInputs(what, None if bands else recorded.bands,
                                  None if dem else recorded.dem, recorded.dem_path)
    if bands and recorded.bands and [int(b) for b in bands] != recorded.bands:
        raise InputError(
            f"{what} was made from bands {recorded.bands} but BANDS gives {list(bands)}: leave "
            f"BANDS empty to use {recorded.bands}, or use a model made from these bands.")
    if not bands and recorded.bands:
        bands = list(recorded.bands)
        taken.append(f"bands {','.join(map(str, bands))}")
    if dem and recorded.dem is False:
        raise InputError(
            f"{what} was made without a DEM but DEM gives '{dem}': leave DEM empty, or use a "
            f"model made with a DEM channel.")
    if not dem and recorded.dem:
        if not recorded.dem_path:
            raise InputError(f"{what} was made with a DEM as extra channel: give it as DEM.")
        if not os.path.isfile(recorded.dem_path):
            raise InputError(
                f"{what} was made with the DEM '{recorded.dem_path}' as extra channel, which "
                f"is not found: give that elevation data as DEM.")
        dem = recorded.dem_path
        taken.append(f"DEM '{dem}'")
    if taken:
        progress.info(f"{what[0].lower()}{what[1:]}'s {' and '.join(taken)} are used "
                      f"(BANDS/DEM not given).")
    return bands, dem
