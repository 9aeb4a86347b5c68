"""Model-ready 4-D fMRI: z-scored volumes on a fixed grid, memory-mapped, served as windows of frames.

``build_voxel_dataset`` reads each run's BOLD on the atlas grid (the ``resample`` step's
``..._space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz``, 91 x 109 x 91) and brain mask,
and for each run:

1. z-scores it within the brain mask: one mean and one standard deviation (population,
   ddof 0) over every in-mask voxel of every frame, so the run's spatial and temporal
   contrasts are kept and only its overall level and scale are removed;
2. fills every voxel outside the mask with the smallest in-mask z-score of the run (the
   background sits just below the brain, as SwiFT and NeuroSTORM feed their models);
3. crops or pads each axis, centred, to the model's grid (91 x 109 x 91 for BrainMT: no
   change; 96 x 96 x 96 for NeuroSTORM: x and z padded 2 + 3 with the background value, y
   cropped 6 + 7), counting the brain voxels a crop removes (``brain_voxels_cropped``).

A dataset folder holds:

``frames.npy``
    (frames, X, Y, Z), every kept run's frames one after the other, float16 by default.
    Why float16: z-scores carry about 3.3 significant digits in it (relative step 2^-11), far
    finer than the noise of a BOLD voxel, and the models train in bf16 (2^-8) anyway; it
    halves the disk and the bytes read per step (a 200-frame window at 96^3 is 354 MB in
    float32, 177 MB in float16). ``dtype="float32"`` keeps full precision.
``runs.tsv``
    run, subject, split, first_frame, n_frames, tr, mean, std, background,
    brain_voxels, brain_voxels_cropped: one row per kept run; its frames are rows
    ``first_frame .. first_frame + n_frames - 1`` of ``frames.npy``.
``splits.tsv``
    the subject -> split table the dataset was built with: the region-level dataset's
    ``splits.tsv`` (``fmriflow.datasets.regions``), so both levels of model split subjects alike.
``dataset_card.json``
    counts per split, grid, crop/pad offsets and the output affine, dtype, skipped runs
    with their reasons, and the provenance of the inputs (sha256).

Windows are cut when the data are read (``VoxelWindowDataset(root, split, window, stride)``),
so one dataset serves any window length. The build holds one run in memory at a time and
writes into the memory-mapped ``frames.npy`` inside a hidden temporary folder that is renamed
into place at the end: a killed build leaves nothing that looks like a dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from ..errors import InputError
from ..io import read_tsv, write_json, write_tsv
from ..provenance import build_sidecar
from . import store
from .splits import SPLITS, SPLITS_FILE, check_runs, check_splits, read_splits
from .store import CARD, MemoryMapped, building_dir

try:  # torch is needed to serve samples, not to build them
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only where torch is absent
    _TorchDataset = object

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
FRAMES = "frames.npy"
RUNS = "runs.tsv"
FOLDER = "voxel dataset folder written by fmriflow.datasets.voxels"  # completes "not a ..."

# model input grids
BRAINMT_SHAPE = (91, 109, 91)
NEUROSTORM_SHAPE = (96, 96, 96)


def build_voxel_dataset(
    runs: Sequence[Mapping[str, Any]],
    splits: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    shape: Sequence[int] = NEUROSTORM_SHAPE,
    dtype: str = "float16",
    min_frames: int = 1,
) -> dict[str, Any]:
    """Write a voxel dataset to ``out_dir`` and return its card.

    Parameters
    ----------
    runs
        One mapping per run: ``run`` (run key), ``bold`` (4-D NIfTI), ``mask`` (3-D brain
        mask on the same grid), optionally ``subject`` (default: from the run key).
    splits
        The subject -> split table (a DataFrame or a ``splits.tsv``, e.g. the region-level
        dataset's); every run's subject must be in it.
    out_dir
        The dataset folder; replaced as a whole, only once the build has succeeded.
    shape
        The model's grid (X, Y, Z); each axis is cropped or padded, centred.
    dtype
        ``float16`` (default) or ``float32`` for ``frames.npy``.
    min_frames
        Runs with fewer frames are skipped and listed in the card.
    """
    if not runs:
        raise ValueError("build_voxel_dataset needs at least one run")
    if dtype not in DTYPES:
        raise ValueError(f"'dtype' must be one of {DTYPES}; {dtype!r} was provided")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"'shape' must be 3 positive sizes; {shape!r} was provided")
    split_table = check_splits(splits)
    specs = check_runs(runs, dict(zip(split_table["subject"], split_table["split"])), ("run", "bold", "mask"),
                       lambda run: str(run["bold"]), lambda run, name: {"bold": name, "mask": str(run["mask"])})
    with building_dir(out_dir) as tmp:
        card = _build(specs, split_table, tmp, shape, dtype, int(min_frames))
    return card


def _build(specs, split_table, tmp: Path, shape, dtype, min_frames) -> dict[str, Any]:
    from ..io import open_nifti

    # Pass 1: headers only; check the geometry and count the frames to allocate.
    reference = None
    kept, skipped, longest = [], [], 0
    for spec in specs:
        bold, mask = open_nifti(spec["bold"]), open_nifti(spec["mask"])
        if len(bold.shape) != 4:
            raise InputError(spec["bold"], f"a BOLD series must be 4-D; got shape {bold.shape}")
        if tuple(mask.shape[:3]) != tuple(bold.shape[:3]) or len(mask.shape) != 3:
            raise InputError(spec["mask"], f"mask shape {mask.shape} does not match the BOLD grid {bold.shape[:3]}")
        if not np.allclose(mask.affine, bold.affine, atol=1e-3):
            raise InputError(spec["mask"], "the mask's affine differs from the BOLD's; both must be on the same grid")
        if reference is None:
            reference = (spec["bold"], tuple(bold.shape[:3]), bold.affine)
        elif tuple(bold.shape[:3]) != reference[1] or not np.allclose(bold.affine, reference[2], atol=1e-3):
            raise InputError(spec["bold"], f"grid {bold.shape[:3]} differs from {reference[1]} of {reference[0]}; "
                             "all runs must be on one grid (the resample step's)")
        info = {**spec, "n_frames": int(bold.shape[3]), "tr": float(bold.header.get_zooms()[3])}
        longest = max(longest, info["n_frames"])
        if info["n_frames"] < min_frames:
            skipped.append({"run": spec["run"], "subject": spec["subject"], "split": spec["split"],
                            "reason": f"{info['n_frames']} frames, fewer than min_frames={min_frames}"})
        else:
            kept.append(info)
    if not kept:
        raise InputError("min_frames", f"no run has at least {min_frames} frames; skipped: {[s['run'] for s in skipped]}; "
                                       f"the longest has {longest}")
    geometry = crop_or_pad(reference[1], shape)

    # Pass 2: one run at a time into the memory-mapped frames.
    total = sum(k["n_frames"] for k in kept)
    frames = open_memmap(tmp / FRAMES, mode="w+", dtype=np.dtype(dtype), shape=(total, *shape))
    rows, position = [], 0
    for k in kept:
        stats = _write_run(k, frames, position, geometry)
        rows.append({"run": k["run"], "subject": k["subject"], "split": k["split"], "first_frame": position,
                     "n_frames": k["n_frames"], "tr": k["tr"], **stats})
        position += k["n_frames"]
    frames.flush()
    del frames
    os.chmod(tmp / FRAMES, 0o644)

    table = pd.DataFrame(rows)
    write_tsv(tmp / RUNS, table)
    write_tsv(tmp / SPLITS_FILE, split_table)
    card = _card(specs, split_table, table, skipped, reference, geometry, shape, dtype, min_frames)
    write_json(tmp / CARD, card)
    return card


def zscore_stats(data: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean, population standard deviation and background z-score of a run (X, Y, Z, T) within ``mask``.

    Taken over all in-mask voxels of all frames, accumulated in float64 one frame at a time;
    ``background`` is the smallest in-mask z-score, the value given to every other voxel.
    """
    n_frames = data.shape[3]
    n_values = int(mask.sum()) * n_frames
    mean = sum(float(data[..., t][mask].sum(dtype=np.float64)) for t in range(n_frames)) / n_values
    squares = sum(float(np.square(data[..., t][mask] - mean, dtype=np.float64).sum()) for t in range(n_frames))
    std = float(np.sqrt(squares / n_values))
    if not std > 0:
        raise ValueError("the BOLD values inside the brain mask are constant")
    lowest = min(float(data[..., t][mask].min()) for t in range(n_frames))
    return {"mean": mean, "std": std, "background": (lowest - mean) / std}


def crop_or_pad(source: Sequence[int], target: Sequence[int]) -> list[dict[str, int]]:
    """Per axis, the centred crop or pad from ``source`` to ``target`` size.

    Each entry has ``source_start``, ``target_start`` and ``length``: voxels
    ``source_start .. +length`` land at ``target_start .. +length``. Cropping drops
    ``(source - target) // 2`` voxels at the start; padding adds ``(target - source) // 2``
    there; the odd voxel goes to the end.
    """
    axes = []
    for s, t in zip(source, target):
        if s >= t:
            axes.append({"source_start": (s - t) // 2, "target_start": 0, "length": t})
        else:
            axes.append({"source_start": 0, "target_start": (t - s) // 2, "length": s})
    return axes


def _write_run(spec: Mapping[str, Any], frames: np.ndarray, first: int, geometry) -> dict[str, Any]:
    """Z-score one run frame by frame into ``frames[first:]`` on the target grid; its statistics."""
    from ..io import load_nifti

    data = np.asanyarray(load_nifti(spec["bold"]).dataobj)
    mask = np.asanyarray(load_nifti(spec["mask"]).dataobj) > 0
    if not mask.any():
        raise InputError(spec["mask"], "the brain mask is empty")
    if not all(np.isfinite(data[..., t][mask]).all() for t in range(data.shape[3])):
        raise InputError(spec["bold"], "non-finite values inside the brain mask")
    try:
        stats = zscore_stats(data, mask)
    except ValueError as exc:
        raise InputError(spec["bold"], str(exc)) from exc
    src = tuple(slice(a["source_start"], a["source_start"] + a["length"]) for a in geometry)
    dst = tuple(slice(a["target_start"], a["target_start"] + a["length"]) for a in geometry)
    inside = mask[src]
    for t in range(data.shape[3]):
        frame = np.full(frames.shape[1:], stats["background"], dtype=np.float64)
        frame[dst] = np.where(inside, (data[..., t][src] - stats["mean"]) / stats["std"], stats["background"])
        frames[first + t] = frame
    return {**stats, "brain_voxels": int(mask.sum()), "brain_voxels_cropped": int(mask.sum() - inside.sum())}


def _card(specs, split_table, table, skipped, reference, geometry, shape, dtype, min_frames) -> dict[str, Any]:
    affine = np.asarray(reference[2], dtype=np.float64).copy()
    offset = np.array([a["source_start"] - a["target_start"] for a in geometry], dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]  # voxel (0,0,0) of the output grid
    counts = {}
    for split in SPLITS:
        rows = table[table["split"] == split]
        counts[split] = {"runs": len(rows), "subjects": int(rows["subject"].nunique()),
                         "frames": int(rows["n_frames"].sum()),
                         "subjects_in_split_table": int((split_table["split"] == split).sum())}
    inputs = [str(s[key]) for s in specs for key in ("bold", "mask")]
    parameters = {"shape": list(shape), "dtype": dtype, "min_frames": min_frames,
                  "zscore": "per run, within the brain mask (mean and population std over voxels and frames)",
                  "background": "smallest in-mask z-score of the run"}
    return {
        "Name": "fmriflow voxel dataset",
        "format_version": FORMAT_VERSION,
        "files": {"frames": FRAMES, "runs": RUNS, "splits": SPLITS_FILE},
        "shape": list(shape),
        "dtype": dtype,
        "n_frames": int(table["n_frames"].sum()),
        "n_runs": len(table),
        "source_grid": list(reference[1]),
        "crop_pad": dict(zip("xyz", geometry)),
        "affine": affine.tolist(),
        "brain_voxels_cropped": int(table["brain_voxels_cropped"].sum()),
        "splits": counts,
        "skipped_runs": skipped,
        "Provenance": build_sidecar("voxel_dataset", inputs, parameters=parameters)["Provenance"],
    }


# --------------------------------------------------------------------------- reading


class VoxelWindowDataset(MemoryMapped, _TorchDataset):
    """Windows of ``window`` consecutive frames of one split, every ``stride`` frames, as PyTorch samples.

    A sample is ``{"x": float32 (window, X, Y, Z), "index": i}`` plus ``"y"`` when ``labels``
    (subject -> target, e.g. from ``fmriflow.datasets.participants.subject_labels``) is given; runs shorter
    than one window give no sample. Each worker process maps ``frames.npy`` itself.
    """

    mapped_files = (FRAMES,)

    def __init__(self, root: str | Path, split: str | None = "train", *, window: int, stride: int | None = None,
                 labels: Mapping[str, Any] | pd.Series | None = None):
        if split is not None and split not in SPLITS:
            raise ValueError(f"'split' must be one of {SPLITS} or None; {split!r} was provided")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"'window' must be a positive integer; {window!r} was provided")
        stride = window if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"'stride' must be a positive integer; {stride!r} was provided")
        self.root, self.split, self.window, self.stride = Path(root), split, window, stride
        runs = read_runs(self.root)
        self.runs = runs if split is None else runs[runs["split"] == split].reset_index(drop=True)
        rows = [(r.run, r.subject, r.first_frame + start, start) for r in self.runs.itertuples()
                for start in range(0, r.n_frames - window + 1, stride)]
        self.index = pd.DataFrame(rows, columns=["run", "subject", "frame", "start"])
        self._targets = None
        if labels is not None:
            labels = dict(labels.items()) if isinstance(labels, pd.Series) else dict(labels)
            missing = sorted(set(self.index["subject"]) - set(labels))
            if missing:
                raise InputError("labels", f"no label for subjects {missing[:10]}; each subject served needs one "
                                           f"(labels were given for {len(labels)} subjects)")
            self._targets = [labels[s] for s in self.index["subject"]]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        first = int(self.index["frame"].iat[i])
        (frames,) = self._open()
        sample = {"x": torch.from_numpy(np.array(frames[first:first + self.window], dtype=np.float32)), "index": i}
        if self._targets is not None:
            sample["y"] = torch.as_tensor(self._targets[i])
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, window={self.window}, samples={len(self)})"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(load_card(self.root)["shape"])


def load_card(root: str | Path) -> dict[str, Any]:
    """The ``dataset_card.json`` of a voxel dataset folder."""
    return store.load_card(root, FOLDER)


def read_runs(root: str | Path) -> pd.DataFrame:
    """``runs.tsv`` of a voxel dataset folder, subject labels kept as text."""
    return read_tsv(store.existing(root, RUNS, FOLDER), dtype={"run": str, "subject": str, "split": str})


def voxel_splits(root: str | Path) -> pd.DataFrame:
    """The subject -> split table a voxel dataset was built with."""
    return read_splits(store.existing(root, SPLITS_FILE, FOLDER))
