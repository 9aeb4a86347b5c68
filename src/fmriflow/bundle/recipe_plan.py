"""Which of this project's data a released model's recipe step reads (``recipes`` in the config).

Torch-free: the workflow calls it when it plans the DAG. A card whose atlas is a voxel grid
(NeuroSTORM) reads the project's MNI-resampled BOLD and brain masks; any other reads the region
time series of the project atlas the card names: A424, or an atlas of ``atlas.pinned`` (Brain-JEPA's
card names ``Schaefer400N17TianS3``) or ``atlas.extra``. Atlas names hold letters and digits only,
so a card's atlas name is also matched with its other characters left out (a card naming
``TianS3+Schaefer400-17n`` finds an ``atlas.extra`` entry ``TianS3Schaefer40017n``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import InputError

KINDS = ("regions", "voxels")


def recipe_kind(card: Mapping[str, Any]) -> str:
    """'voxels' for a card whose input is a voxel grid (no regions), else 'regions'."""
    atlas = card["atlas"]
    return "voxels" if atlas.get("grid") and not atlas.get("regions") else "regions"


def config_name(atlas_name: str) -> str:
    """The atlas name as a config key can hold it (letters and digits)."""
    return re.sub(r"[^A-Za-z0-9]", "", atlas_name)


def project_atlas(card: Mapping[str, Any], card_path: str, key: str, atlases: Sequence[str]) -> str:
    """The project atlas that the card's atlas is, of ``atlases`` (A424, ``atlas.extra``, ``atlas.pinned``).

    ``key``: the config key that names the bundle, for the error. A card atlas the project does not
    parcellate is an error naming the card, the atlas, and the key that would add it.
    """
    name = card["atlas"]["name"]
    for candidate in (name, config_name(name)):
        if candidate in atlases:
            return candidate
    raise InputError(card_path, f"{key}: the model was trained on atlas {name!r} ({card['atlas']['n_regions']} "
                     f"regions), which this project does not parcellate (its atlases: {', '.join(atlases)}); add it "
                     f"under atlas.extra as {config_name(name)!r} (image and labels, region names as in the card), "
                     f"or name its pinned copy under atlas.pinned where one exists (docs/atlases.md)")


BASE_MB = 1000  # the interpreter, numpy, pandas and nibabel, with room to spare (a recipe job measured 320 MB)
SERIES_MB_PER_MB = 8  # region recipe: every run's series as float64 at the card's TR, then its windows


def prepare_mem_mb(kind: str, listing: str, card: Mapping[str, Any]) -> int:
    """Memory (MB) of a recipe step on the runs the run list ``listing`` names (those that exist yet).

    Regions: every run's series is held (float64, at the card's TR, which may be shorter than the runs':
    BrainLM's 0.735 s) and then its windows: ``SERIES_MB_PER_MB`` MB per MB of the series tables. Voxels:
    one run at a time, twice as it is held once loaded (while it is decompressed, or scaled), plus its
    frames on the card's grid at its TR (float32); from the largest run's header, whatever the file's
    compression. A run is held as nibabel loads it: a header with ``scl_slope``/``scl_inter`` scales it
    to floats (an int16 run becomes float64, 4 times its stored size), so its dtype is read from one voxel.
    """
    import math
    import os

    import numpy as np

    from ..runfiles import listed_files

    if not os.path.isfile(listing):  # not made yet (a dry run): the job is sized when it is scheduled
        return BASE_MB
    if kind == "regions":
        total = sum(os.path.getsize(p) for p in listed_files(listing, "timeseries")) / 1e6
        return BASE_MB + math.ceil(SERIES_MB_PER_MB * total)
    from ..io import open_nifti

    grid, target = card["atlas"]["grid"]["shape"], float(card["input"]["tr"]["target_tr"])
    largest = 0.0
    for path in listed_files(listing, "bold"):
        image = open_nifti(path)
        shape, tr = image.header.get_data_shape(), float(image.header.get_zooms()[3])
        # one voxel through the same proxy the recipe loads the run with: the scaled dtype, read from the file's start
        try:
            itemsize = np.asanyarray(image.dataobj[(slice(0, 1),) * len(shape)]).dtype.itemsize
        except Exception as error:  # a header that reads but data that do not (truncated, corrupt)
            raise InputError(path, f"its first voxel could not be read ({error}); is the file complete?") from error
        loaded = math.prod(shape) * itemsize
        frames = round(shape[3] * tr / target) * math.prod(grid) * 4
        largest = max(largest, (2 * loaded + frames) / 1e6)
    return BASE_MB + math.ceil(largest)
