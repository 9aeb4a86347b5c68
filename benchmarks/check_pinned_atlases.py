"""Check the real pinned atlas files (fmriflow.atlas_pinned) in a folder: sha256, labels, names, grid.

    python benchmarks/check_pinned_atlases.py FOLDER

FOLDER holds the files under their release names (as FMRIFLOW_ATLAS_DIR would). Every pinned
atlas is checked; a missing or changed file is an error, nothing is skipped. Exit status 1 on any
failure. Checks, per atlas: each file's sha256 against its pin (through the product's own fetch,
downloads off), the image's labels exactly 1..N and the look-up table's N rows (the product's
table builder), the grid (the FSL MNI152 2 mm grid of A424), and the hemisphere in each region's
name against the sign of its centroid's x. For the 450-region atlas also: its labels 1-50 are the
Tian S3 image voxel for voxel (the subcortex comes first, as in Brain-JEPA's input).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from fmriflow.atlas_pinned import PINNED_ATLASES, pinned_atlas_files, pinned_atlas_table
from fmriflow.io import open_nifti

MNI_2MM_SHAPE = (91, 109, 91)
MNI_2MM_AFFINE = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)


def check(name: str, folder: Path, cache: Path) -> list[str]:
    problems = []
    spec, files = pinned_atlas_files(name, cache / name, folder, download=False)  # raises on a wrong sha256
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
    for key, path in files.items():
        print(f"  {key:9s} {spec.files[key].sha256}  {path.name}")
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


def main(folder: Path) -> int:
    problems = []
    with tempfile.TemporaryDirectory() as cache:
        for name in PINNED_ATLASES:
            try:
                problems += check(name, folder, Path(cache))
            except Exception as exc:  # report every atlas, then fail
                problems.append(f"{name}: {exc}")
    try:
        problems += check_subcortex_first(folder)
    except Exception as exc:
        problems.append(f"subcortex-first check: {exc}")
    for problem in problems:
        print("FAIL", problem)
    print("all pinned atlases verified" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
