"""Check the real pinned atlas files (fmriflow.atlas_pinned) in a folder: sha256, labels, names, grid.

    python benchmarks/check_pinned_atlases.py FOLDER

FOLDER holds the files under their release names (as FMRIFLOW_ATLAS_DIR would). Every pinned
atlas is checked; a missing or changed file is an error, nothing is skipped. Exit status 1 on any
failure. Checks, per atlas: each file's sha256 against its pin (through the product's own fetch,
downloads off), the image's labels exactly 1..N and the look-up table's N rows (the product's
table builder), the grid (the FSL MNI152 2 mm grid of A424), and the hemisphere in each region's
name against the sign of its centroid's x. For the 450-region atlas also: its labels 1-50 are the
Tian S3 image voxel for voxel (the subcortex comes first, as in Brain-JEPA's input). For the derived
17-network atlas: every 7-network parcel's voxels carry one 17-network label and no two parcels share
one (the relabelling moved no voxel), and how many of its names differ from TemplateFlow's 17-network
table, and of the 7-network atlas's names from the 7-network CIFTI's, when those files are in FOLDER.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from fmriflow.atlas_pinned import PINNED_ATLASES, pinned_atlas_files, pinned_atlas_table
from fmriflow.atlas_schaefer17 import label_names
from fmriflow.io import open_nifti

MNI_2MM_SHAPE = (91, 109, 91)
MNI_2MM_AFFINE = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)


def check(name: str, folder: Path, cache: Path) -> list[str]:
    problems = []
    spec, files = pinned_atlas_files(name, cache, folder, download=False)  # raises on a wrong sha256
    table = pinned_atlas_table(spec, files)  # raises unless labels are exactly 1..N in image and table
    img = open_nifti(files["image"])
    if img.shape != MNI_2MM_SHAPE or not np.allclose(img.affine, MNI_2MM_AFFINE):
        problems.append(f"{name}: grid {img.shape} {img.affine.tolist()} is not the FSL MNI152 2 mm grid")
    sided = table[table["hemisphere"].isin(["L", "R"])]
    wrong = sided[(sided["hemisphere"] == "R") != (sided["x"] > 0)]
    if len(wrong):
        problems.append(f"{name}: {len(wrong)} regions' centroid x contradicts their hemisphere: "
                        f"{wrong['name'].head().tolist()}")
    print(f"{name}: {len(files)} files sha256 ok, {len(table)} labels 1..{spec.n_regions} in image and table, "
          f"{len(sided)} lateralised names agree with centroid x: {not len(wrong)}")
    for key in spec.files:
        print(f"  {key:9s} {spec.files[key].sha256}  {files[key].name}")
    return problems


def check_subcortex_first(folder: Path) -> list[str]:
    tian = np.rint(np.asarray(open_nifti(folder / PINNED_ATLASES["TianS3"].files["image"].name).dataobj))
    combined_spec = PINNED_ATLASES["Schaefer400N7TianS3"].files["image"]
    combined = np.rint(np.asarray(open_nifti(folder / combined_spec.name).dataobj))
    sub = np.where(combined <= 50, combined, 0)
    same = np.array_equal(sub, tian)
    print(f"Schaefer400N7TianS3 labels 1-50 equal the Tian S3 image voxel for voxel: {same} "
          f"({int((tian > 0).sum())} Tian voxels; {int((combined > 50).sum())} cortical voxels)")
    return [] if same else ["Schaefer400N7TianS3: labels 1-50 differ from the Tian S3 image"]


def check_relabelling(folder: Path, cache: Path) -> list[str]:
    spec, files = pinned_atlas_files("Schaefer400N17TianS3", cache, folder, download=False)
    seven = np.rint(np.asarray(open_nifti(files["source_image"]).dataobj)).astype(int)
    seventeen = np.rint(np.asarray(open_nifti(files["image"]).dataobj)).astype(int)
    pairs = np.unique(np.stack([seven.ravel(), seventeen.ravel()], axis=1), axis=0)
    one_to_one = (len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1])) == 451
                  and np.array_equal(pairs[pairs[:, 0] <= 50, 1], np.arange(51)))
    moved = int(((seven > 0) != (seventeen > 0)).sum())
    print(f"Schaefer400N17TianS3: the derived image is the 7-network image relabelled one-to-one: {one_to_one} "
          f"({moved} voxels in or out of the atlas; Tian labels unchanged); derived image sha256 "
          f"{sha256(files['image'])}")
    table = pinned_atlas_table(spec, files)
    for label, ours, theirs in (("17-network names vs TemplateFlow's 17-network table", table["name"][50:],
                                 folder / "tpl-MNI152NLin6Asym_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.tsv"),
                                ("Schaefer400N7TianS3 names vs the 7-network CIFTI's", None, files["surface7"])):
        if not Path(theirs).is_file():
            continue
        if ours is None:
            n7 = pinned_atlas_table(*pinned_atlas_files("Schaefer400N7TianS3", cache, folder, download=False))
            ours, theirs_names = n7["name"][50:], label_names(theirs)
        else:
            theirs_names = pd.read_csv(theirs, sep="\t")["name"]
        differ = int((np.asarray(ours) != np.asarray(theirs_names)).sum())
        print(f"  {label}: {differ} of 400 positions differ")
    return [] if one_to_one and not moved else ["Schaefer400N17TianS3: the relabelling is not one-to-one"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(folder: Path) -> int:
    problems = []
    with tempfile.TemporaryDirectory() as cache:
        for name in PINNED_ATLASES:
            try:
                problems += check(name, folder, Path(cache))
            except Exception as exc:  # report every atlas, then fail
                problems.append(f"{name}: {exc}")
        for extra in (lambda: check_subcortex_first(folder), lambda: check_relabelling(folder, Path(cache))):
            try:
                problems += extra()
            except Exception as exc:  # noqa: BLE001 - report, then fail
                problems.append(f"{extra}: {exc}")
    for problem in problems:
        print("FAIL", problem)
    print("all pinned atlases verified" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
