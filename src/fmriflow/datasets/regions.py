"""Model-ready region-window datasets: subject-level splits, robust scaling, windows on disk.

``make_splits`` assigns subjects (never windows) to train/val/test, seeded and optionally
stratified. ``build_dataset`` turns per-run region time series (time x regions TSVs, 'n/a'
columns for regions dropped for coverage) into fixed-length windows stored region-major,
as the models take them, and ``RegionWindowDataset`` serves them to PyTorch.

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

import contextlib
import glob
import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from ..errors import InputError
from ..io import read_json, read_tsv, sha256sum, write_json, write_tsv
from ..provenance import build_sidecar
from .participants import bare

try:  # torch is needed to serve samples, not to build them
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only where torch is absent
    _TorchDataset = object

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
MAX_RESAMPLE_DENOMINATOR = 1000
SCALING_BLOCK_BYTES = 256 << 20  # training data held at once while fitting the scaling

SAMPLES = "samples.npy"
REGION_MASK = "region_mask.npy"
INDEX = "index.tsv"
SPLITS_FILE = "splits.tsv"
SCALING = "scaling.tsv"
CARD = "dataset_card.json"


# --------------------------------------------------------------------------- splits


def make_splits(
    subjects: Iterable[str],
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: Mapping[str, Any] | pd.Series | Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Assign subjects to train/val/test, seeded and optionally stratified.

    Parameters
    ----------
    subjects
        Subject labels, with or without the ``sub-`` prefix; repeats are ignored, and
        the order does not matter (subjects are sorted before the seeded shuffle).
    fractions
        Target fractions of subjects in (train, val, test), summing to 1. Split sizes
        are the largest-remainder rounding of ``fractions * n``; with 3 or more subjects
        every split with a positive fraction gets at least one subject.
    seed
        Seed of the shuffle: the same subjects, fractions and seed give the same splits.
    stratify
        A label per subject (mapping or Series keyed by subject, or a sequence aligned
        with ``subjects``), e.g. from ``subject_labels(participants, "response")``. Each
        label's count in each split is within one subject of its share of that split
        (a controlled rounding of the label x split table).

    Returns
    -------
    DataFrame with columns subject, split (and stratum when stratified), sorted by subject.
    """
    subjects = list(subjects)
    labels = _stratum_labels(subjects, stratify)
    subs = sorted({bare(s) for s in subjects})
    if not subs:
        raise ValueError("make_splits needs at least one subject")
    fractions = _check_fractions(fractions)
    rng = np.random.default_rng(seed)

    n = len(subs)
    totals = _apportion(n, fractions, at_least_one=n >= 3)
    strata = sorted({labels[s] for s in subs}) if labels is not None else [""]
    members = {k: [s for s in subs if (labels[s] if labels is not None else "") == k] for k in strata}
    sizes = np.array([len(members[k]) for k in strata])
    counts = _controlled_rounding(sizes, totals, rng)

    split_of: dict[str, str] = {}
    for row, stratum in enumerate(strata):
        order = rng.permutation(len(members[stratum]))
        shuffled = [members[stratum][i] for i in order]
        bounds = np.cumsum(counts[row])
        for position, subject in enumerate(shuffled):
            split_of[subject] = SPLITS[int(np.searchsorted(bounds, position, side="right"))]
    frame = pd.DataFrame({"subject": subs, "split": [split_of[s] for s in subs]})
    if labels is not None:
        frame["stratum"] = [labels[s] for s in subs]
    frame.attrs.update(seed=int(seed), fractions=list(fractions), stratified=labels is not None)
    return frame


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

    Returns
    -------
    The dataset card (also written as ``dataset_card.json``).
    """
    if not runs:
        raise ValueError("build_dataset needs at least one run")
    window, stride = _positive_int(window, "window"), _positive_int(stride, "stride")
    if target_tr is not None and not (np.isfinite(target_tr) and target_tr > 0):
        raise ValueError(f"'target_tr' must be a positive number of seconds or None; {target_tr!r} was provided")
    if min_coverage_regions is not None:
        min_coverage_regions = _positive_int(min_coverage_regions, "min_coverage_regions")
    split_table = check_splits(splits)
    if seed is None and isinstance(splits, pd.DataFrame):
        seed = splits.attrs.get("seed")
    specs = _check_runs(runs, dict(zip(split_table["subject"], split_table["split"])))
    with building_dir(out_dir) as tmp:
        card = _build(specs, split_table, tmp, window, stride, target_tr, min_coverage_regions, seed)
    return card


def _build(specs, split_table, tmp: Path, window, stride, target_tr, min_regions, seed) -> dict[str, Any]:
    scratch = tmp / "scratch"
    scratch.mkdir()

    # Pass 1: read, check and resample each run once; cache it region-major on disk.
    regions: list[str] = []
    reference = ""
    kept: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for number, spec in enumerate(specs):
        frame = _read_timeseries(spec)
        if not regions:
            regions, reference = [str(c) for c in frame.columns], spec["name"]
        _check_columns(frame, regions, spec["name"], reference)
        values, valid = _check_values(frame, spec["name"])
        values, tr_stored = _resample(values, valid, spec["tr"], target_tr)
        info = {
            "run": spec["run"], "subject": spec["subject"], "split": spec["split"],
            "tr": spec["tr"], "tr_stored": tr_stored, "n_timepoints_input": len(frame),
            "n_timepoints": len(values), "n_regions_with_data": int(valid.sum()),
        }
        reason = _skip_reason(len(values), int(valid.sum()), window, min_regions, target_tr)
        if reason:
            skipped.append({**info, "reason": reason, "name": spec["name"]})
            continue
        starts = list(range(0, len(values) - window + 1, stride))
        cache = scratch / f"run{number:06d}.npy"
        np.save(cache, np.ascontiguousarray(values.T))  # (regions, time), float64
        kept.append({**info, "cache": cache, "valid": valid, "starts": starts})
        del frame, values

    train = [k for k in kept if k["split"] == "train"]
    if not train:
        short = [s for s in skipped if s["split"] == "train"]
        listing = "; ".join(f"{s['run']}: {s['reason']}" for s in short[:5]) + (" ..." if len(short) > 5 else "")
        raise InputError(short[0]["name"] if short else None,
                         f"no training run yields a window, so the scaling cannot be fitted ({listing})")
    median, iqr, n_fit, zero_iqr = _fit_scaling([k["cache"] for k in train], len(regions))
    defined = np.isfinite(median)

    # Pass 2: scale each run and write its windows into the memory-mapped arrays.
    n_samples = sum(len(k["starts"]) for k in kept)
    samples = open_memmap(tmp / SAMPLES, mode="w+", dtype=np.float32, shape=(n_samples, len(regions), window))
    masks = open_memmap(tmp / REGION_MASK, mode="w+", dtype=np.bool_, shape=(n_samples, len(regions)))
    for name in (SAMPLES, REGION_MASK):
        _reserve(tmp / name)
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
    # the card is the folder's provenance record: the checksum of each file it describes
    card["Provenance"]["Outputs"] = [{"path": name, "sha256": sha256sum(tmp / name)}
                                     for name in (SAMPLES, REGION_MASK, INDEX, SPLITS_FILE, SCALING)]
    write_json(tmp / CARD, card)
    return card


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


class MemoryMapped:
    """Opens the ``.npy`` files named in ``mapped_files`` (under ``self.root``) as memory maps, once per process.

    A pickled copy (a DataLoader worker's) carries no maps and opens its own on first use.
    """

    mapped_files: tuple[str, ...] = ()
    _arrays: tuple[np.ndarray, ...] | None = None
    _pid: int | None = None

    def _open(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = tuple(np.load(self.root / name, mmap_mode="r") for name in self.mapped_files)
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # each process maps the files itself
        state["_pid"] = None
        return state


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
    return read_json(_existing(root, CARD))


def scaling(root: str | Path) -> pd.DataFrame:
    """The scaling of a dataset folder: region, median, iqr (apply as ``(x - median) / iqr``)."""
    return read_tsv(_existing(root, SCALING), dtype={"region": str})


def read_index(root: str | Path) -> pd.DataFrame:
    """``index.tsv`` of a dataset folder, subject labels kept as text."""
    return read_tsv(_existing(root, INDEX), dtype={"run": str, "subject": str, "split": str})


def read_splits(path: str | Path) -> pd.DataFrame:
    """A ``splits.tsv`` (a dataset folder or the file itself), subject labels kept as text."""
    path = Path(path)
    return read_tsv(path / SPLITS_FILE if path.is_dir() else path, dtype={"subject": str, "split": str})


# --------------------------------------------------------------------------- helpers


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or f[0] <= 0 or abs(f.sum() - 1) > 1e-6:
        raise ValueError(f"'fractions' must be 3 non-negative numbers (train > 0) summing to 1; {tuple(fractions)} was provided")
    return f / f.sum()


def _stratum_labels(subjects: list, stratify) -> dict[str, str] | None:
    if stratify is None:
        return None
    if isinstance(stratify, (Mapping, pd.Series)):
        items = stratify.items()
    else:
        stratify = list(stratify)
        if len(stratify) != len(subjects):
            raise ValueError(f"'stratify' has {len(stratify)} labels for {len(subjects)} subjects")
        items = zip(subjects, stratify)
    labels: dict[str, str] = {}
    for subject, label in items:
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise InputError(None, f"subject '{subject}' has no stratification label")
        label, subject = str(label), bare(subject)
        if labels.setdefault(subject, label) != label:
            raise InputError(None, f"subject '{subject}' has two stratification labels: {labels[subject]!r} and {label!r}")
    missing = sorted({bare(s) for s in subjects} - set(labels))
    if missing:
        raise InputError(None, f"no stratification label for subjects {missing[:10]}")
    return labels


def _apportion(n: int, fractions: np.ndarray, *, at_least_one: bool) -> np.ndarray:
    """Largest-remainder rounding of ``n * fractions``; optionally no empty split."""
    quota = np.round(n * fractions, 9)
    counts = np.floor(quota).astype(int)
    remainder = quota - counts
    for s in sorted(range(len(counts)), key=lambda s: (-remainder[s], s))[: n - counts.sum()]:
        counts[s] += 1
    if at_least_one:
        for s in np.flatnonzero((counts == 0) & (fractions > 0)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[s] += 1
    return counts


def _controlled_rounding(sizes: np.ndarray, totals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer stratum x split counts with the given margins, each cell the floor or ceiling of its share.

    The share table ``sizes * totals / n`` has integer margins, so such a rounding always
    exists (the transportation polytope is integral); random costs pick one, seeded.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = sizes.sum()
    share = np.round(np.outer(sizes, totals) / n, 9)
    low, high = np.floor(share), np.ceil(share)
    n_strata, n_splits = share.shape
    rows = np.kron(np.eye(n_strata), np.ones(n_splits))
    cols = np.kron(np.ones(n_strata), np.eye(n_splits))
    result = milp(
        c=rng.random(share.size),
        constraints=[LinearConstraint(rows, sizes, sizes), LinearConstraint(cols, totals, totals)],
        integrality=np.ones(share.size),
        bounds=Bounds(low.ravel(), high.ravel()),
    )
    if result.x is None:  # cannot happen for integer margins; kept as a guard
        raise RuntimeError(f"no stratified split of {sizes.tolist()} subjects into {totals.tolist()}: {result.message}")
    return np.round(result.x).astype(int).reshape(n_strata, n_splits)


def check_splits(splits: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A subject -> split table (DataFrame or ``splits.tsv``) checked: bare labels, known splits, no repeats."""
    path = None if isinstance(splits, pd.DataFrame) else Path(splits)
    table = read_splits(path) if path is not None else splits
    missing = {"subject", "split"} - set(table.columns)
    if missing:
        raise InputError(path, f"splits table lacks columns {sorted(missing)}")
    table = table.copy()
    table["subject"] = [bare(s) for s in table["subject"]]
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise InputError(path, f"unknown split names {bad}; allowed: {list(SPLITS)}")
    repeated = sorted(table.loc[table["subject"].duplicated(), "subject"])
    if repeated:
        raise InputError(path, f"subjects listed more than once in the splits table: {repeated[:10]}")
    return table.sort_values("subject", kind="stable").reset_index(drop=True)


def _check_runs(runs: Sequence[Mapping[str, Any]], split_of: dict[str, str]) -> list[dict[str, Any]]:
    specs = []
    for number, run in enumerate(runs):
        missing = {"run", "tr", "timeseries"} - set(run)
        if missing:
            raise InputError(None, f"run #{number} lacks {sorted(missing)} (needs run, subject, tr, timeseries)")
        series = run["timeseries"]
        name = str(run["run"]) if isinstance(series, pd.DataFrame) else str(series)
        subject = run_subject(run, split_of, name)
        try:
            tr = float(run["tr"])
        except (TypeError, ValueError):
            tr = float("nan")
        if not (np.isfinite(tr) and tr > 0):
            raise InputError(name, f"TR must be a positive number of seconds, got {run['tr']!r}")
        specs.append({"run": str(run["run"]), "subject": subject, "split": split_of[subject], "tr": tr,
                      "timeseries": series, "name": name})
    return in_split_order(specs)


def run_subject(run: Mapping[str, Any], split_of: Mapping[str, str], name: str) -> str:
    """A run's bare subject label (its ``subject``, else from the run key); the subject must have a split."""
    from ..naming import subject_of

    subject = bare(run.get("subject") or subject_of(str(run["run"])))
    if subject not in split_of:
        raise InputError(name, f"subject '{subject}' of run {run['run']} has no split in the splits table")
    return subject


def in_split_order(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run specs with train, val and test in contiguous blocks, runs in key order inside; no run twice."""
    keys = [s["run"] for s in specs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError(None, f"runs listed more than once: {repeated[:10]}")
    return sorted(specs, key=lambda s: (SPLITS.index(s["split"]), s["run"]))


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


def _check_values(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
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


def _resample(values: np.ndarray, valid: np.ndarray, tr: float, target_tr: float | None) -> tuple[np.ndarray, float]:
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


def _skip_reason(n_time: int, n_valid: int, window: int, min_regions: int | None, target_tr) -> str | None:
    at = "" if target_tr is None else f" after resampling to TR {target_tr} s"
    if n_time < window:
        return f"{n_time} time points{at}, fewer than one window of {window}"
    if n_valid == 0:
        return "no region has data (every column is n/a)"
    if min_regions is not None and n_valid < min_regions:
        return f"{n_valid} regions with data, fewer than min_coverage_regions={min_regions}"
    return None


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
        raise ValueError(f"'{name}' must be a positive integer; {value!r} was provided")
    return int(value)


def _existing(root: str | Path, name: str) -> Path:
    path = Path(root) / name
    if not path.is_file():
        raise InputError(path, "missing: not a dataset folder written by fmriflow.datasets.regions.build_dataset")
    return path


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: on a full disk this raises ENOSPC here,
    where writing through the map later would kill the process with SIGBUS."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no reservation, a full disk shows as SIGBUS
        return
    with open(path, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


@contextlib.contextmanager
def building_dir(out_dir: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``out_dir``: renamed onto it if the block succeeds, removed if not."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("tmp", "old"):  # folders a killed build left behind
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*.{suffix}"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; an existing ``out`` is moved aside first, then removed."""
    if not out.exists():
        os.replace(new, out)
        return
    graveyard = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, graveyard / "old")
    os.replace(new, out)
    shutil.rmtree(graveyard)
