"""The A424 atlas (and any label atlas): fetch, verify, cache, describe.

A424 is the 424-region atlas of BrainLM: 360 Glasser HCP-MMP1.0 cortical parcels
(labels 1-180 right hemisphere, 181-360 left), 36 Brainnetome subcortical parcels
(361-396) and 28 cerebellar lobules (397-424) on the MNI152NLin6Asym 2 mm grid.
It is downloaded from a pinned commit of the BrainLM repository (Apache-2.0) and
verified by sha256; offline sites point ``FMRIFLOW_ATLAS_DIR`` or the config key
``atlas.path`` at a folder holding the two files. :func:`fetch_files` does the same for
any pinned files (the third-party atlases of :mod:`fmriflow.atlas_pinned`).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path, sha256sum

ATLAS_DIR_ENV = "FMRIFLOW_ATLAS_DIR"

_A424_BASE_URL = (
    "https://raw.githubusercontent.com/vandijklab/BrainLM/"
    "b591d88d0efffc0f059c73dfca1f293554795af1/toolkit/atlases/"
)


@dataclass(frozen=True)
class AtlasFile:
    name: str
    url: str
    sha256: str


A424_FILES = {
    "labels_img": AtlasFile(
        "A424+2mm.nii.gz",
        _A424_BASE_URL + "A424%2B2mm.nii.gz",
        "8478d7516a2bbf295989835d5033d03e4283143a2955c90428f634951702501b",
    ),
    "coordinates": AtlasFile(
        "A424_Coordinates.dat",
        _A424_BASE_URL + "A424_Coordinates.dat",
        "cdad8f8859c211b1400211ebbad455dedcc4399ac14fd614354fb71b110c892c",
    ),
}
A424_N_REGIONS = 424


class AtlasUnavailableError(RuntimeError):
    """No verified copy of the atlas could be found or downloaded."""


def fetch_a424(
    cache_dir: str | Path,
    local_dir: str | Path | None = None,
    *,
    download: bool = True,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Return verified paths of the A424 files inside ``cache_dir``, filling it if needed (see :func:`fetch_files`)."""
    return fetch_files(A424_FILES, cache_dir, local_dir, download=download, timeout=timeout, atlas="A424")


def fetch_files(
    files: Mapping[str, AtlasFile],
    cache_dir: str | Path,
    local_dir: str | Path | None = None,
    *,
    download: bool = True,
    timeout: float = 60.0,
    atlas: str = "A424",
) -> dict[str, Path]:
    """Return verified paths of an atlas's pinned ``files`` inside ``cache_dir``, filling it if needed.

    Sources, in order: ``local_dir`` (config ``atlas.path``), the folder named by the
    environment variable ``FMRIFLOW_ATLAS_DIR``, files already in the cache, the pinned
    download address. Every file is checked against its pinned sha256 wherever it
    came from; a mismatch is an error, never a silent replacement.

    Each file is kept as ``cache_dir/<its pinned name>``, so atlases that pin the same file
    share one copy in a shared ``cache_dir``: stored once, fetched once by jobs that run one after
    another; jobs filling it at the same time may each download it, and each renames a whole
    verified file into place (``atomic_path(shared=True)``).
    """
    cache_dir = Path(cache_dir)
    sources = [Path(d) for d in (local_dir, os.environ.get(ATLAS_DIR_ENV)) if d]
    paths = {}
    for key, spec in files.items():
        target = cache_dir / spec.name
        for source in sources:
            candidate = source / spec.name
            if not candidate.is_file():
                raise InputError(candidate, f"{atlas} atlas file {spec.name} not found in atlas folder {source} "
                                            f"(from {ATLAS_DIR_ENV} or atlas.path); its pinned address is {spec.url}")
            _check_sha(candidate, spec)
            if not (target.is_file() and sha256sum(target) == spec.sha256):  # a verified copy mends the cache's
                with atomic_path(target, shared=True) as tmp:
                    shutil.copyfile(candidate, tmp)
            break
        else:
            if target.is_file():
                _check_sha(target, spec, "the cached copy is damaged or of another pin: delete it and it is "
                                         "fetched again")
            elif download:
                _download(spec, target, timeout, files, atlas)
            else:
                raise AtlasUnavailableError(_unavailable_message(spec, cache_dir, "downloads are disabled", files, atlas))
        paths[key] = target
    return paths


def _check_sha(path: Path, spec: AtlasFile, remedy: str = "") -> None:
    digest = sha256sum(path)
    if digest != spec.sha256:
        raise InputError(path, f"sha256 {digest} does not match the pinned {spec.sha256} of {spec.name}"
                               + (f" ({remedy})" if remedy else ""))


def _download(spec: AtlasFile, target: Path, timeout: float, files: Mapping[str, AtlasFile], atlas: str) -> None:
    try:
        with atomic_path(target, shared=True) as tmp:
            with urllib.request.urlopen(spec.url, timeout=timeout) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh)
            _check_sha(tmp, spec)
    except (urllib.error.URLError, OSError) as exc:
        message = _unavailable_message(spec, target.parent, f"download failed ({exc})", files, atlas)
        raise AtlasUnavailableError(message) from exc


def _unavailable_message(spec: AtlasFile, cache_dir: Path, why: str, files: Mapping[str, AtlasFile], atlas: str) -> str:
    pins = "; ".join(f"{f.name} from {f.url} (sha256 {f.sha256})" for f in files.values())
    return (
        f"{atlas} atlas file {spec.name} is not available: {why}. Either allow the download from "
        f"{spec.url}, or point the environment variable {ATLAS_DIR_ENV} (or the config key "
        f"atlas.path) at a folder holding {', '.join(f.name for f in files.values())}, "
        f"or copy them into the cache {cache_dir}. The pinned files: {pins}."
    )


def a424_labels_table(coordinates_path: str | Path) -> pd.DataFrame:
    """The A424 look-up table: index, name, group, hemisphere and MNI x, y, z (mm).

    Names are built from the published label ranges, since the atlas ships no names.
    """
    coords = pd.read_csv(coordinates_path, sep=r"\s+", header=None, names=["index", "x", "y", "z"])
    if len(coords) != A424_N_REGIONS or not np.array_equal(coords["index"], np.arange(1, A424_N_REGIONS + 1)):
        raise InputError(coordinates_path, f"expected {A424_N_REGIONS} rows labelled 1..{A424_N_REGIONS}")
    index = coords["index"].to_numpy()
    group = np.select(
        [index <= 360, index <= 396], ["cortex", "subcortex"], default="cerebellum"
    )
    hemi = np.select([index <= 180, index <= 360], ["R", "L"], default=np.where(coords["x"] >= 0, "R", "L"))
    names = [f"{g.capitalize()}_{h}_{i:03d}" for g, h, i in zip(group, hemi, index)]
    return pd.DataFrame(
        {"index": index, "name": names, "group": group, "hemisphere": hemi,
         "x": coords["x"], "y": coords["y"], "z": coords["z"]}
    )


def labels_of_image(image: str | Path) -> pd.DataFrame:
    """A look-up table (index, name) from the labels present in a label image, named by their number."""
    from .io import open_nifti

    values = np.unique(np.rint(np.asarray(open_nifti(image).dataobj)).astype(int))
    values = values[values > 0]
    return pd.DataFrame({"index": values, "name": [str(v) for v in values]})


def load_labels_table(path: str | Path) -> pd.DataFrame:
    """Read a BIDS-Atlas style TSV with at least ``index`` and ``name`` columns."""
    table = pd.read_csv(path, sep="\t")
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise InputError(path, f"atlas look-up table lacks column(s) {sorted(missing)}")
    if table["index"].duplicated().any():
        raise InputError(path, "atlas look-up table repeats an index")
    return table


def label_data(img, image: str | Path) -> np.ndarray:
    """The voxel array of a label image, refused unless it is 3D and holds integers (not a probabilistic atlas)."""
    if img.ndim != 3:
        raise InputError(image, f"a label atlas must be a 3D image, got shape {img.shape}")
    data = np.asarray(img.dataobj)
    if not np.allclose(data, np.rint(data)):
        raise InputError(image, "a label atlas must hold integer labels (is it a probabilistic atlas?)")
    return data


def label_atlas_on_grid(image: str | Path, labels_tsv: str | Path, reference: str | Path):
    """A user's label atlas on the reference (BOLD) grid, with its look-up table.

    The image is resampled with nearest neighbour only when its grid differs from the
    reference; the returned ``info`` says which happened, for the sidecar.
    """
    table = load_labels_table(labels_tsv)
    out, info = label_image_on_grid(image, reference, table, labels_tsv)
    return out, table, info


def label_image_on_grid(image: str | Path, reference: str | Path, table: pd.DataFrame, table_source: str | Path):
    """A label image on the reference grid (see :func:`label_atlas_on_grid`); every label must be in ``table``."""
    import nibabel as nib
    from nilearn.image import resample_to_img
    from nilearn.image.resampling import BoundingBoxError

    from .checks import check_atlas_on_grid
    from .io import open_nifti

    original = img = open_nifti(image)
    ref = open_nifti(reference)
    data = label_data(img, image)
    same = img.shape == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-4)
    if not same:
        try:
            img = resample_to_img(img, ref, interpolation="nearest", force_resample=True, copy_header=True)
        except BoundingBoxError:  # nilearn: no part of the atlas lies on the grid; refused just below
            img = nib.Nifti1Image(np.zeros(ref.shape[:3], np.int32), ref.affine)
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)
    lost = [] if same else check_atlas_on_grid(image, np.rint(data).astype(np.int64), labels)
    unknown = np.setdiff1d(np.unique(labels[labels > 0]), table["index"].to_numpy())
    if unknown.size:
        raise InputError(table_source, f"labels {unknown[:10].tolist()} of {Path(image).name} are not in the table")
    out = nib.Nifti1Image(labels, ref.affine)
    out.header.set_xyzt_units("mm")
    info = {"Resampled": not same, "Interpolation": "nearest" if not same else None,
            "OriginalGrid": list(map(int, original.shape)), "OriginalAffine": original.affine.tolist(),
            "LabelsLostInResampling": lost}
    return out, info
