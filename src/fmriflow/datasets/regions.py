"""Model-ready region-window datasets: robust scaling, windows on disk.

``build_dataset`` turns per-run region time series (time x regions TSVs, 'n/a' columns for
regions dropped for coverage) into fixed-length windows stored region-major, as the models
take them, with subjects split by ``fmriflow.datasets.splits.make_splits``;
``RegionWindowDataset`` serves them to PyTorch.

A dataset folder holds:

``samples.npy``
    float32 (samples, regions, window): robust-scaled windows; dropped regions are 0.
``region_mask.npy``
    bool (samples, regions): True where the region has data in that sample.
``index.tsv``
    sample, run, subject, split, start_tr, tr: one row per sample (its row in the
    arrays); ``start_tr`` counts time points at the stored TR ``tr`` (seconds).
``splits.tsv``
    subject, split (and stratum when the splits were stratified).
``scaling.tsv``
    region, median, iqr: fitted on every time point of the training runs that enter the
    dataset; ``iqr`` is the divisor actually used (an IQR of 0 is stored as 1); 'n/a' for
    a region with no training data, which is then masked in every sample.
``dataset_card.json``
    counts per split, shapes, window/stride/TR settings, scaling summary, skipped runs
    with their reasons, the split seed, and the provenance of the inputs (sha256).

Subject labels are BIDS labels without the ``sub-`` prefix ("01"); read the TSVs with
``read_index``/``read_splits`` (or ``dtype={"subject": str}``) so pandas keeps them as text.

The build streams: each run is read, checked, resampled and cached on disk once; the
scaling is fitted from the cached training runs a block of regions at a time; the windows
are then written run by run into a memory-mapped ``samples.npy``. Only one run (plus one
block of regions of the training data) is ever in memory. Everything is built in a hidden
temporary folder beside ``out_dir`` and renamed into place at the end, so a killed build
leaves nothing that looks like a dataset.

Resampling to ``target_tr`` uses ``scipy.signal.resample_poly`` (polyphase FIR with an
anti-aliasing low-pass) with ``up/down`` the rational approximation of ``tr/target_tr``
(denominator at most ``MAX_RESAMPLE_DENOMINATOR``) and ``padtype='line'`` (the line joining
the first and last values is removed before and restored after filtering, so run edges do
not sag towards zero). The stored TR is ``tr * down / up``, exactly the sampling of the
stored series, and is recorded per sample; it differs from ``target_tr`` only when the
ratio has no small rational form.
"""

from __future__ import annotations

import math
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from ..errors import InputError, SettingError
from ..io import read_tsv, sha256sum, write_json, write_tsv
from ..provenance import build_sidecar
from . import store
from .splits import SPLITS, SPLITS_FILE, check_runs, check_splits
from .splits import make_splits, read_splits  # noqa: F401  re-exported: tests import them from here
from .store import CARD, MemoryMapped, building_dir, reserve

try:  # torch is needed to serve samples, not to build them
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only where torch is absent
    _TorchDataset = object

FORMAT_VERSION = 1
MAX_RESAMPLE_DENOMINATOR = 1000
SCALING_BLOCK_BYTES = 256 << 20  # training data held at once while fitting the scaling

SAMPLES = "samples.npy"
REGION_MASK = "region_mask.npy"
INDEX = "index.tsv"
SCALING = "scaling.tsv"
FOLDER = "dataset folder written by fmriflow.datasets.regions.build_dataset"  # completes "not a ..."


# --------------------------------------------------------------------------- build


def build_dataset(
    runs: Sequence[Mapping[str, Any]],
    splits: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    window: int = 200,
    stride: int = 200,
    target_tr: float | None = None,
    min_coverage_regions: int | None = None,
    seed: int | None = None,
    scaling: pd.DataFrame | None = None,
    scaling_source: str | None = None,
) -> dict[str, Any]:
    """Write a region-window dataset to ``out_dir`` and return its card.

    Parameters
    ----------
    runs
        One mapping per run: ``run`` (run key), ``subject`` (label; derived from the run
        key when absent), ``tr`` (seconds) and ``timeseries`` (path of a time x regions
        TSV, or a DataFrame). All runs must have the same regions in the same order.
    splits
        The subject -> split table (``make_splits``' output or a ``splits.tsv``); every
        run's subject must be in it.
    out_dir
        The dataset folder; replaced as a whole, only once the build has succeeded.
    window, stride
        Window length and step in time points (at the stored TR). A run shorter than one
        window contributes no samples and is listed under ``skipped_runs`` in the card.
    target_tr
        Resample every run to this TR (seconds) before windowing; None keeps each run's TR.
    min_coverage_regions
        Skip (and list) runs with fewer regions that have data; None keeps every run that
        has at least one.
    seed
        The split seed to record in the card; default: ``splits.attrs["seed"]`` when set.
    scaling
        Given statistics instead of fitting them (region, median, iqr, as ``scaling.tsv``; the
        regions in the time series' order): an encoder's inputs are prepared as in its
        pretraining (``fmriflow.bundle``). A region with no median is masked, as one without
        training data is. ``scaling_source`` says in the card where they came from.

    Returns
    -------
    The dataset card (also written as ``dataset_card.json``).
    """
    if not runs:
        raise ValueError("build_dataset needs at least one run")
    window, stride = _positive_int(window, "window"), _positive_int(stride, "stride")
    if target_tr is not None and not (np.isfinite(target_tr) and target_tr > 0):
        raise SettingError("target_tr", f"'target_tr' must be a positive number of seconds or None; {target_tr!r} was provided")
    if min_coverage_regions is not None:
        min_coverage_regions = _positive_int(min_coverage_regions, "min_coverage_regions")
    split_table = check_splits(splits)
    if seed is None and isinstance(splits, pd.DataFrame):
        seed = splits.attrs.get("seed")
    specs = check_runs(runs, dict(zip(split_table["subject"], split_table["split"])),
                       ("run", "subject", "tr", "timeseries"), _run_name, _run_fields)
    given = None if scaling is None else (scaling, scaling_source or "given")
    with building_dir(out_dir) as tmp:
        card = _build(specs, split_table, tmp, window, stride, target_tr, min_coverage_regions, seed, given)
    return card


def _build(specs, split_table, tmp: Path, window, stride, target_tr, min_regions, seed, given=None) -> dict[str, Any]:
    scratch = tmp / "scratch"
    scratch.mkdir()
    regions, kept, skipped = _cache_runs(specs, scratch, window, stride, target_tr, min_regions)
    if given is None:
        median, iqr, n_fit, zero_iqr = _fit_scaling([k["cache"] for k in _training_runs(kept, skipped)], len(regions))
    else:
        median, iqr, n_fit, zero_iqr = _given_scaling(given[0], regions, specs[0]["name"])
    defined = np.isfinite(median)

    # Pass 2: scale each run and write its windows into the memory-mapped arrays.
    n_samples = sum(len(k["starts"]) for k in kept)
    samples = open_memmap(tmp / SAMPLES, mode="w+", dtype=np.float32, shape=(n_samples, len(regions), window))
    masks = open_memmap(tmp / REGION_MASK, mode="w+", dtype=np.bool_, shape=(n_samples, len(regions)))
    for name in (SAMPLES, REGION_MASK):
        reserve(tmp / name)
    rows = []
    position = 0
    for k in kept:
        mask = k["valid"] & defined
        scaled = _scale_run(np.load(k["cache"]), mask, median, iqr)
        k["first_sample"] = position
        for start in k["starts"]:
            samples[position] = scaled[:, start:start + window]
            masks[position] = mask
            rows.append((position, k["run"], k["subject"], k["split"], start, k["tr_stored"]))
            position += 1
        del scaled
    samples.flush()
    masks.flush()
    del samples, masks
    shutil.rmtree(scratch)
    for name in (SAMPLES, REGION_MASK):
        os.chmod(tmp / name, 0o644)

    index = pd.DataFrame(rows, columns=["sample", "run", "subject", "split", "start_tr", "tr"])
    scaling_table = pd.DataFrame({"region": regions, "median": median, "iqr": iqr})
    write_tsv(tmp / INDEX, index)
    write_tsv(tmp / SPLITS_FILE, split_table)
    write_tsv(tmp / SCALING, scaling_table)
    card = _card(specs, split_table, kept, skipped, index, regions, median, iqr, n_fit, zero_iqr,
                 window=window, stride=stride, target_tr=target_tr, min_regions=min_regions, seed=seed)
    if given is not None:
        card["scaling"].update(fit_on=given[1], n_timepoints=0)
    # the card is the folder's provenance record: the checksum of each file it describes
    card["Provenance"]["Outputs"] = [{"path": name, "sha256": sha256sum(tmp / name)}
                                     for name in (SAMPLES, REGION_MASK, INDEX, SPLITS_FILE, SCALING)]
    write_json(tmp / CARD, card)
    return card


def _cache_runs(specs, scratch: Path, window, stride, target_tr, min_regions) -> tuple[list[str], list, list]:
    """Pass 1: read, check and resample each run once; cache it region-major on disk.

    Returns the regions, the runs kept (with their cache file and window starts) and the runs skipped.
    """
    regions: list[str] = []
    reference = ""
    kept: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for number, spec in enumerate(specs):
        frame = _read_timeseries(spec)
        if not regions:
            regions, reference = [str(c) for c in frame.columns], spec["name"]
        _check_columns(frame, regions, spec["name"], reference)
        values, valid = check_values(frame, spec["name"])
        values, tr_stored = resample_series(values, valid, spec["tr"], target_tr)
        info = {
            "run": spec["run"], "subject": spec["subject"], "split": spec["split"],
            "tr": spec["tr"], "tr_stored": tr_stored, "n_timepoints_input": len(frame),
            "n_timepoints": len(values), "n_regions_with_data": int(valid.sum()),
        }
        reason, settings = _skip_reason(len(values), int(valid.sum()), window, min_regions, target_tr)
        if reason:
            skipped.append({**info, "reason": reason, "settings": settings, "name": spec["name"]})
            continue
        starts = list(range(0, len(values) - window + 1, stride))
        cache = scratch / f"run{number:06d}.npy"
        np.save(cache, np.ascontiguousarray(values.T))  # (regions, time), float64
        kept.append({**info, "cache": cache, "valid": valid, "starts": starts})
        del frame, values
    return regions, kept, skipped


def _training_runs(kept: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept runs of training subjects, which the scaling is fitted on; there must be one."""
    train = [k for k in kept if k["split"] == "train"]
    if not train:
        short = [s for s in skipped if s["split"] == "train"]
        if short:
            name = short[0]["name"]
            listing = "; ".join(f"{s['run']}: {s['reason']}" for s in short[:5]) + (" ..." if len(short) > 5 else "")
            settings = list(dict.fromkeys(key for s in short for key in s["settings"]))
        else:
            name, listing = "runs", f"none of the {len(kept) + len(skipped)} runs is of a subject in the train split"
            settings = []
        raise InputError(name, f"no training run yields a window, so the scaling cannot be fitted ({listing})",
                         settings=settings)
    return train


def _card(specs, split_table, kept, skipped, index, regions, median, iqr, n_fit, zero_iqr, *,
          window, stride, target_tr, min_regions, seed) -> dict[str, Any]:
    defined = np.isfinite(median)
    counts = {}
    for split in SPLITS:
        rows = index[index["split"] == split]
        counts[split] = {
            "samples": len(rows),
            "runs": int(rows["run"].nunique()),
            "subjects": int(rows["subject"].nunique()),
            "subjects_in_split_table": int((split_table["split"] == split).sum()),
        }
    inputs = [str(s["timeseries"]) for s in specs if not isinstance(s["timeseries"], pd.DataFrame)]
    sidecar = build_sidecar(
        "dataset", inputs,
        parameters={"window": window, "stride": stride, "target_tr": target_tr,
                    "min_coverage_regions": min_regions, "seed": seed},
    )
    runs = [{key: k[key] for key in ("run", "subject", "split", "tr", "tr_stored", "n_timepoints_input",
                                       "n_timepoints", "n_regions_with_data", "first_sample")}
            | {"n_windows": len(k["starts"])} for k in kept]
    return {
        "Name": "fmriflow region-window dataset",
        "format_version": FORMAT_VERSION,
        "files": {"samples": SAMPLES, "region_mask": REGION_MASK, "index": INDEX, "splits": SPLITS_FILE,
                  "scaling": SCALING},
        "n_samples": len(index),
        "n_regions": len(regions),
        "shapes": {"samples": [len(index), len(regions), window], "region_mask": [len(index), len(regions)]},
        "dtype": "float32",
        "layout": "samples x regions x time (region-major, as models take (B, R, T))",
        "window": window,
        "stride": stride,
        "tr": {
            "target_tr": target_tr,
            "resampling": None if target_tr is None else
            f"scipy.signal.resample_poly, up/down = tr/target_tr (max denominator {MAX_RESAMPLE_DENOMINATOR}), padtype='line'",
            "stored": sorted({float(t) for t in index["tr"]}),
        },
        "splits": counts,
        "seed": seed,
        "scaling": {
            "method": "robust: (x - median) / IQR per region, IQR of 0 replaced by 1",
            "fit_on": "every time point of the training runs that yield at least one window",
            "n_timepoints": sum(k["n_timepoints"] for k in kept if k["split"] == "train"),
            "n_timepoints_per_region": _summary(n_fit.astype(np.float64)),
            "median": _summary(median[defined]),
            "iqr": _summary(iqr[defined]),
            "regions_with_zero_iqr": [r for r, z in zip(regions, zero_iqr) if z],
            "regions_without_training_data": [r for r, d in zip(regions, defined) if not d],
        },
        "masked_region_samples": int(len(index) * len(regions) - sum(
            len(k["starts"]) * int((k["valid"] & defined).sum()) for k in kept)),
        "skipped_runs": [{key: s[key] for key in ("run", "subject", "split", "n_timepoints", "reason")}
                         for s in skipped],
        "runs": runs,
        **sidecar,
    }


# --------------------------------------------------------------------------- reading


class RegionWindowDataset(MemoryMapped, _TorchDataset):
    """The windows of one split of a dataset folder, served from the memory-mapped arrays.

    ``ds[i]`` is ``dict(x=float32 tensor (regions, window), region_mask=bool tensor
    (regions,), index=global sample id)``. The arrays are opened on first access in each
    process (DataLoader worker), never in ``__init__`` and never pickled, so the dataset
    works with ``DataLoader(num_workers=...)`` under fork or spawn and with a
    ``DistributedSampler``.

    Parameters
    ----------
    root
        A folder written by ``build_dataset``.
    split
        "train", "val", "test", or None for every sample.
    """

    mapped_files = (SAMPLES, REGION_MASK)

    def __init__(self, root: str | Path, split: str | None = "train"):
        if split is not None and split not in SPLITS:
            raise ValueError(f"'split' must be one of {SPLITS} or None; {split!r} was provided")
        self.root = Path(root)
        self.split = split
        index = read_index(self.root)
        self.index = index if split is None else index[index["split"] == split].reset_index(drop=True)
        self._ids = self.index["sample"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        samples, masks = self._open()
        sample = int(self._ids[i])
        return {
            "x": torch.from_numpy(np.array(samples[sample], dtype=np.float32)),
            "region_mask": torch.from_numpy(np.array(masks[sample], dtype=np.bool_)),
            "index": sample,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, samples={len(self)})"

    @property
    def subjects(self) -> list[str]:
        return sorted(self.index["subject"].unique())


def load_card(root: str | Path) -> dict[str, Any]:
    """The ``dataset_card.json`` of a dataset folder."""
    return store.load_card(root, FOLDER)


def scaling(root: str | Path) -> pd.DataFrame:
    """The scaling of a dataset folder: region, median, iqr (apply as ``(x - median) / iqr``)."""
    return read_tsv(store.existing(root, SCALING, FOLDER), dtype={"region": str})


def read_index(root: str | Path) -> pd.DataFrame:
    """``index.tsv`` of a dataset folder, subject labels kept as text."""
    return read_tsv(store.existing(root, INDEX, FOLDER), dtype={"run": str, "subject": str, "split": str})


# --------------------------------------------------------------------------- helpers


def _run_name(run: Mapping[str, Any]) -> str:
    series = run["timeseries"]
    return str(run["run"]) if isinstance(series, pd.DataFrame) else str(series)


def _run_fields(run: Mapping[str, Any], name: str) -> dict[str, Any]:
    try:
        tr = float(run["tr"])
    except (TypeError, ValueError):
        tr = float("nan")
    if not (np.isfinite(tr) and tr > 0):
        raise InputError(name, f"TR must be a positive number of seconds, got {run['tr']!r}")
    return {"tr": tr, "timeseries": run["timeseries"], "name": name}


def _read_timeseries(spec: dict[str, Any]) -> pd.DataFrame:
    series = spec["timeseries"]
    if isinstance(series, pd.DataFrame):
        return series
    try:
        return read_tsv(series)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(series, f"not a readable time-series TSV ({exc})") from exc


def _check_columns(frame: pd.DataFrame, regions: list[str], name: str, reference: str) -> None:
    columns = [str(c) for c in frame.columns]
    if len(columns) != len(regions):
        raise InputError(name, f"{len(columns)} region columns, but {reference} has {len(regions)}; "
                         "all runs must be parcellated with the same atlas")
    if columns != regions:
        first = next(i for i, (a, b) in enumerate(zip(columns, regions)) if a != b)
        raise InputError(name, f"column {first + 1} is '{columns[first]}' but '{regions[first]}' in {reference}; "
                         "all runs must have the same regions in the same order")


def check_values(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Values (time x regions, float64) and which regions have data (not dropped)."""
    if len(frame) == 0:
        raise InputError(name, "the time series has no rows")
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise InputError(name, f"non-numeric values in column '{text[0]}'")
    values = frame.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    dropped = np.isnan(values).all(axis=0)
    bad = np.flatnonzero(~finite.all(axis=0) & ~dropped)
    if len(bad):
        column = bad[0]
        times = np.flatnonzero(~finite[:, column])
        raise InputError(name, f"non-finite values in column '{frame.columns[column]}' at time points "
                         f"{times[:5].tolist()}{' ...' if len(times) > 5 else ''}; a region is either "
                         f"dropped (all n/a) or finite throughout ({len(bad)} such column(s))")
    return values, ~dropped


def resample_series(values: np.ndarray, valid: np.ndarray, tr: float, target_tr: float | None) -> tuple[np.ndarray, float]:
    """Resample (time x regions) to ``target_tr``; returns the series and its actual TR."""
    if target_tr is None:
        return values, tr
    ratio = Fraction(tr / target_tr).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    if up == down:
        return values, tr
    from scipy.signal import resample_poly

    n_out = math.ceil(len(values) * up / down)
    out = np.full((n_out, values.shape[1]), np.nan)
    if valid.any():
        out[:, valid] = resample_poly(values[:, valid], up, down, axis=0, padtype="line")
    return out, float(f"{tr * down / up:.12g}")  # drop float noise: 0.72 * 10 / 9 -> 0.8


def _skip_reason(n_time: int, n_valid: int, window: int, min_regions: int | None,
                 target_tr) -> tuple[str | None, tuple[str, ...]]:
    """Why a run yields no window (None: it does), and the parameters behind that reason."""
    at = "" if target_tr is None else f" after resampling to TR {target_tr} s"
    if n_time < window:
        return f"{n_time} time points{at}, fewer than one window of {window}", ("window",) + (("target_tr",) if at else ())
    if n_valid == 0:
        return "no region has data (every column is n/a)", ()
    if min_regions is not None and n_valid < min_regions:
        return f"{n_valid} regions with data, fewer than min_coverage_regions={min_regions}", ("min_coverage_regions",)
    return None, ()


def _fit_scaling(caches: list[Path], n_regions: int) -> tuple[np.ndarray, ...]:
    """Median, IQR (0 replaced by 1), time points used and zero-IQR flag per region.

    Computed over the cached training runs; median and IQR are NaN where a region has no
    training data.

    The training data are read a block of regions at a time (region-major caches make
    each block contiguous), so memory stays near ``SCALING_BLOCK_BYTES``.
    """
    n_time = sum(np.load(c, mmap_mode="r").shape[1] for c in caches)
    block = int(max(1, min(n_regions, SCALING_BLOCK_BYTES // max(1, 8 * n_time))))
    median = np.full(n_regions, np.nan)
    iqr = np.full(n_regions, np.nan)
    count = np.zeros(n_regions, dtype=np.int64)
    for first in range(0, n_regions, block):
        data = np.concatenate([np.load(c, mmap_mode="r")[first:first + block] for c in caches], axis=1)
        finite = np.isfinite(data)
        count[first:first + len(data)] = finite.sum(axis=1)
        if finite.all():
            q25, q50, q75 = np.percentile(data, [25, 50, 75], axis=1)
            median[first:first + len(data)] = q50
            iqr[first:first + len(data)] = q75 - q25
        else:
            for row in range(len(data)):
                values = data[row, finite[row]]
                if len(values):
                    q25, q50, q75 = np.percentile(values, [25, 50, 75])
                    median[first + row], iqr[first + row] = q50, q75 - q25
        del data, finite
    zero = iqr == 0
    iqr[zero] = 1.0
    return median, iqr, count, zero


def _given_scaling(table: pd.DataFrame, regions: list[str], name: str) -> tuple[np.ndarray, ...]:
    """``_fit_scaling``'s arrays from given statistics, checked against the time series' regions."""
    given = [str(r) for r in table["region"]]
    if given != regions:
        first = next((i for i, (a, b) in enumerate(zip(given, regions)) if a != b), min(len(given), len(regions)))
        raise InputError(name, f"the given scaling has {len(given)} regions, the time series {len(regions)}; they "
                         f"first differ at position {first + 1} ({given[first:first + 1]} vs {regions[first:first + 1]})",
                         settings=("scaling",))
    median = table["median"].to_numpy(dtype=np.float64)
    iqr = table["iqr"].to_numpy(dtype=np.float64)
    bad = np.isfinite(median) & ~(np.isfinite(iqr) & (iqr > 0))
    if bad.any():
        raise InputError(name, f"the given scaling's iqr must be positive where a median is given; region "
                         f"{regions[int(np.flatnonzero(bad)[0])]} has {iqr[bad][0]!r}", settings=("scaling",))
    return median, iqr, np.zeros(len(regions), dtype=np.int64), np.zeros(len(regions), dtype=bool)


def _scale_run(values: np.ndarray, mask: np.ndarray, median: np.ndarray, iqr: np.ndarray) -> np.ndarray:
    """(regions x time) scaled to float32; regions outside ``mask`` are 0."""
    scaled = np.zeros(values.shape, dtype=np.float32)
    scaled[mask] = (values[mask] - median[mask, None]) / iqr[mask, None]
    return scaled


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"min": None, "median": None, "max": None}
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SettingError(name, f"'{name}' must be a positive integer; {value!r} was provided")
    return int(value)
