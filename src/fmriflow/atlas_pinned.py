"""Third-party label atlases pinned like A424 (address at a fixed commit + sha256): the recipes' atlases.

Asked for by name with the config key ``atlas.pinned``; fetched, verified and cached with
:func:`fmriflow.atlas.fetch_files` (so ``FMRIFLOW_ATLAS_DIR`` / ``atlas.path`` serve offline
sites), then put on the A424 grid and parcellated in the same pass as A424. The atlases share one
cache folder (``atlas.pinned_cache_dir``) holding each source file once under its pinned name: the
Tian files the three atlases have in common are stored once (:func:`source_files`
checks that a name means one address and sha256).

- ``TianS3``: the Melbourne Subcortex Atlas, scale III, 3T (Tian et al. 2020): 50 subcortical
  regions on the FSL MNI152 (MNI152NLin6Asym) 2 mm grid. Names from its label list, MNI
  centroids from its centre-of-gravity list.
- ``Schaefer400N17TianS3``: the same 450 regions with Schaefer-400 in its 17-network order (the
  order of Brain-JEPA's cortical table), derived from pinned files: the ``Schaefer400N7TianS3``
  image relabelled through the 7->17 parcel correspondence that Tian's two CIFTI label files give
  (:mod:`fmriflow.atlas_schaefer17`); Schaefer names from the 17-network CIFTI's label table
  (CBIG's current names; TemplateFlow's 17-network table holds an older order, docs/atlases.md).
- ``Schaefer400N7TianS3``: the 450-region atlas Brain-JEPA's input is made of: Tian S3 as labels
  1-50, then Schaefer-400 (7 networks, CBIG order) as labels 51-450. The image is the combined
  file the Tian release ships; the cortical names come from TemplateFlow's Schaefer-400 table
  (the CBIG order and names), the cortical centroids are computed from the image.

Brain-JEPA's released data loader puts the 50 Tian S3 regions first and the 400 Schaefer
regions after, and its cortical table is the 17-network Schaefer-400 (docs/atlases.md records where
this was read): ``Schaefer400N17TianS3`` is its atlas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .atlas import AtlasFile, fetch_files, label_data
from .atlas_schaefer17 import derive_image, label_names
from .errors import InputError

# yetianmed/subcortex (the Tian atlas release), the newest commit when pinned (2023-03-24 changes
# of the files used here); the 3T subcortex-only and cortex-subcortex NIfTI files.
_TIAN_BASE = ("https://raw.githubusercontent.com/yetianmed/subcortex/"
              "62751401be0dba587442799748a886d5d87b8364/Group-Parcellation/3T/")
# templateflow/tpl-MNI152NLin6Asym: its Schaefer-400 look-up tables are plain git files (the
# images are git-annex keys with MD5 only, so they give no sha256 to pin).
_TPL_BASE = ("https://raw.githubusercontent.com/templateflow/tpl-MNI152NLin6Asym/"
             "a68885d55e5669fd86b8c749ec97550d8fb5949d/")

TIAN_S3_IMAGE = AtlasFile(
    "Tian_Subcortex_S3_3T.nii", _TIAN_BASE + "Subcortex-Only/Tian_Subcortex_S3_3T.nii",
    "df86741fedcf5814cf9c91817f794f19b92e149f057335a5568b5fc32bb17bc7")
TIAN_S3_LABELS = AtlasFile(
    "Tian_Subcortex_S3_3T_label.txt", _TIAN_BASE + "Subcortex-Only/Tian_Subcortex_S3_3T_label.txt",
    "66f0415163459e4b9e8524efeff138b8889a04f635c6e053f663c93fbacb215d")
TIAN_S3_CENTROIDS = AtlasFile(
    "Tian_Subcortex_S3_3T_COG.txt", _TIAN_BASE + "Subcortex-Only/Tian_Subcortex_S3_3T_COG.txt",
    "0ad4d21da08765d98d16a9bbca8cd03e32bcb6313aca688e48e8774197ab43e5")
SCHAEFER400_7_TIAN_S3_IMAGE = AtlasFile(
    "Schaefer2018_400Parcels_7Networks_order_Tian_Subcortex_S3_MNI152NLin6Asym_2mm.nii.gz",
    _TIAN_BASE + "Cortex-Subcortex/MNIvolumetric/"
                 "Schaefer2018_400Parcels_7Networks_order_Tian_Subcortex_S3_MNI152NLin6Asym_2mm.nii.gz",
    "a6568b75ec7920bc60262d8b10dfaf9bb9fdbddd518c7313b48ae7465b687d7f")
SCHAEFER400_7_NAMES = AtlasFile(
    "tpl-MNI152NLin6Asym_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv",
    _TPL_BASE + "tpl-MNI152NLin6Asym_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv",
    "91fe503df22267bb6c9ab3b9e9e82eec0e08f496d4f9dcb9661e67d1abb14f07")
# Tian's CIFTI label files of both Schaefer orders (same grayordinates): the 7->17 correspondence.
SCHAEFER400_7_TIAN_S3_SURFACE = AtlasFile(
    "Schaefer2018_400Parcels_7Networks_order_Tian_Subcortex_S3.dlabel.nii",
    _TIAN_BASE + "Cortex-Subcortex/Schaefer2018_400Parcels_7Networks_order_Tian_Subcortex_S3.dlabel.nii",
    "3ee6ea48cfcf0c800894a442a539bd4cea0f0f29de2efc363e24b1e448ffcafb")
SCHAEFER400_17_TIAN_S3_SURFACE = AtlasFile(
    "Schaefer2018_400Parcels_17Networks_order_Tian_Subcortex_S3.dlabel.nii",
    _TIAN_BASE + "Cortex-Subcortex/Schaefer2018_400Parcels_17Networks_order_Tian_Subcortex_S3.dlabel.nii",
    "751a79e950054510ac9f59f119b5a133e92edf810588fedf42d413808c2e0e99")

TIAN_S3_N_REGIONS = 50
SCHAEFER_N_REGIONS = 400
TABLE_COLUMNS = ["index", "name", "group", "hemisphere", "x", "y", "z"]


@dataclass(frozen=True)
class PinnedAtlas:
    """A pinned atlas: its files (``image`` is the label image) and how its look-up table is built."""

    name: str
    files: Mapping[str, AtlasFile]
    n_regions: int
    description: str
    table: Callable[[Mapping[str, Path]], pd.DataFrame]
    # a label image made from the pinned files (written into the cache), for an atlas no file holds
    derive: Callable[[Mapping[str, Path], Path], Path] | None = None


def tian_s3_table(files: Mapping[str, Path]) -> pd.DataFrame:
    """Tian S3: index 1-50, the release's names (``-rh`` / ``-lh``) and its centre-of-gravity MNI mm."""
    names = [n.strip() for n in Path(files["labels"]).read_text().splitlines() if n.strip()]
    cog = pd.read_csv(files["centroids"], sep=r"\s+", header=None, names=["x", "y", "z"])
    for path, rows in ((files["labels"], len(names)), (files["centroids"], len(cog))):
        if rows != TIAN_S3_N_REGIONS:
            raise InputError(path, f"expected {TIAN_S3_N_REGIONS} rows (Tian S3), found {rows}")
    hemi = ["R" if n.endswith("-rh") else "L" if n.endswith("-lh") else "" for n in names]
    return pd.DataFrame({"index": np.arange(1, TIAN_S3_N_REGIONS + 1), "name": names, "group": "subcortex",
                         "hemisphere": hemi, "x": cog["x"], "y": cog["y"], "z": cog["z"]})


def schaefer_names(path: str | Path) -> pd.DataFrame:
    """Schaefer-400 (index, name, group, hemisphere) from a TemplateFlow dseg table, in CBIG order."""
    table = pd.read_csv(path, sep="\t")
    if list(table["index"]) != list(range(1, SCHAEFER_N_REGIONS + 1)):
        raise InputError(path, f"expected indices 1..{SCHAEFER_N_REGIONS} in order (Schaefer-400)")
    hemi = table["name"].str.extract(r"_(LH|RH)_", expand=False).map({"LH": "L", "RH": "R"})
    return pd.DataFrame({"index": table["index"], "name": table["name"], "group": "cortex", "hemisphere": hemi})


def image_centroids(image: str | Path, indices) -> pd.DataFrame:
    """MNI mm centroid (mean voxel position through the affine) of each label in ``indices``; all must be present."""
    from .timeseries.regions import centroid_table

    table = centroid_table(image).set_index("index")
    absent = sorted(set(int(i) for i in indices) - set(table.index))
    if absent:
        raise InputError(image, f"labels {absent[:10]} have no voxel in the image")
    return table.loc[list(indices), ["x", "y", "z"]].reset_index(drop=True)


def schaefer400_7_tian_s3_table(files: Mapping[str, Path]) -> pd.DataFrame:
    """Tian S3 (labels 1-50, its own centroids) then Schaefer-400 7 networks (labels 51-450, image centroids)."""
    cortex = schaefer_names(files["names"])
    cortex["index"] = cortex["index"] + TIAN_S3_N_REGIONS
    cortex[["x", "y", "z"]] = image_centroids(files["image"], cortex["index"]).to_numpy()
    return pd.concat([tian_s3_table(files), cortex], ignore_index=True)[TABLE_COLUMNS]


def schaefer400_17_tian_s3_table(files: Mapping[str, Path]) -> pd.DataFrame:
    """Tian S3 (1-50) then Schaefer-400 17 networks (51-450): names from the 17-network CIFTI, centroids
    from the derived image."""
    names = label_names(files["surface17"])
    hemi = pd.Series(names).str.extract(r"_(LH|RH)_", expand=False).map({"LH": "L", "RH": "R"})
    cortex = pd.DataFrame({"index": np.arange(1, SCHAEFER_N_REGIONS + 1) + TIAN_S3_N_REGIONS, "name": names,
                           "group": "cortex", "hemisphere": hemi})
    cortex[["x", "y", "z"]] = image_centroids(files["image"], cortex["index"]).to_numpy()
    return pd.concat([tian_s3_table(files), cortex], ignore_index=True)[TABLE_COLUMNS]


PINNED_ATLASES: dict[str, PinnedAtlas] = {
    "TianS3": PinnedAtlas(
        "TianS3", {"image": TIAN_S3_IMAGE, "labels": TIAN_S3_LABELS, "centroids": TIAN_S3_CENTROIDS},
        TIAN_S3_N_REGIONS, "Tian (Melbourne) Subcortex Atlas scale III, 3T, MNI152NLin6Asym 2 mm", tian_s3_table),
    "Schaefer400N7TianS3": PinnedAtlas(
        "Schaefer400N7TianS3",
        {"image": SCHAEFER400_7_TIAN_S3_IMAGE, "labels": TIAN_S3_LABELS, "centroids": TIAN_S3_CENTROIDS,
         "names": SCHAEFER400_7_NAMES},
        TIAN_S3_N_REGIONS + SCHAEFER_N_REGIONS,
        "Tian S3 (1-50) then Schaefer2018 400 parcels 7 networks (51-450): Brain-JEPA's region order",
        schaefer400_7_tian_s3_table),
    "Schaefer400N17TianS3": PinnedAtlas(
        "Schaefer400N17TianS3",
        {"source_image": SCHAEFER400_7_TIAN_S3_IMAGE, "surface7": SCHAEFER400_7_TIAN_S3_SURFACE,
         "surface17": SCHAEFER400_17_TIAN_S3_SURFACE, "labels": TIAN_S3_LABELS, "centroids": TIAN_S3_CENTROIDS},
        TIAN_S3_N_REGIONS + SCHAEFER_N_REGIONS,
        "Tian S3 (1-50) then Schaefer2018 400 parcels 17 networks (51-450): Brain-JEPA's atlas and region order; "
        "the 7-network image relabelled through the 7->17 correspondence of Tian's CIFTI label files",
        schaefer400_17_tian_s3_table, derive=derive_image),
}


def source_files(atlases: Mapping[str, PinnedAtlas]) -> dict[str, AtlasFile]:
    """Every distinct pinned file of ``atlases`` by its name, the key of the shared cache.

    Two pins of one name with different addresses or hashes would fight over one cached file:
    an error naming both.
    """
    out: dict[str, AtlasFile] = {}
    for atlas_name, spec in atlases.items():
        for pin in spec.files.values():
            seen = out.setdefault(pin.name, pin)
            if seen != pin:
                raise ValueError(f"pinned atlas {atlas_name}: file {pin.name} is pinned as {pin.url} (sha256 "
                                 f"{pin.sha256}) and as {seen.url} (sha256 {seen.sha256}); the shared cache "
                                 "keeps one file per name: rename one")
    return out


SOURCE_FILES = source_files(PINNED_ATLASES)  # checked on import: a clash is a registry error


def pinned_atlas_files(name: str, cache_dir: str | Path, local_dir: str | Path | None = None, *,
                       download: bool = True) -> tuple[PinnedAtlas, dict[str, Path]]:
    """The pinned atlas ``name`` and its verified files in ``cache_dir`` (sources as for A424).

    ``cache_dir`` is shared by the pinned atlases (``atlas.pinned_cache_dir``): a file another
    atlas already cached is verified and used, not fetched again. A derived atlas's ``image`` is
    the label image made from those files, written into ``cache_dir``.
    """
    if name not in PINNED_ATLASES:
        raise InputError(None, f"atlas.pinned: unknown pinned atlas {name!r}; allowed: {sorted(PINNED_ATLASES)}")
    spec = PINNED_ATLASES[name]
    files = fetch_files(spec.files, cache_dir, local_dir, download=download, atlas=name)
    if spec.derive is not None:
        files = {**files, "image": spec.derive(files, Path(cache_dir))}
    return spec, files


def pinned_atlas_table(spec: PinnedAtlas, files: Mapping[str, Path]) -> pd.DataFrame:
    """The look-up table of a pinned atlas, checked against its image: labels exactly 1..n_regions."""
    from .io import open_nifti

    table = spec.table(files)
    data = label_data(open_nifti(files["image"]), files["image"])
    present = np.unique(np.rint(data).astype(np.int64))
    present = present[present > 0]
    expected = np.arange(1, spec.n_regions + 1)
    if len(table) != spec.n_regions or not np.array_equal(table["index"], expected) or \
            not np.array_equal(present, expected):
        raise InputError(files["image"], f"{spec.name}: expected labels 1..{spec.n_regions} in the image and "
                                         f"its table; the image holds {present.size} labels "
                                         f"({present[:3].tolist()}..{present[-3:].tolist()}), the table "
                                         f"{len(table)} rows")
    return table
