"""Denoising's data handling, side by side: the memory layout fmriflow uses against the plain one.

One demo-sized run (91 x 109 x 91 x 200 float32, a quarter of the voxels in the mask) is written
as .nii.gz; then, each in its own subprocess so that each peak RSS is its own:

- ``read``: fmriflow.io.load_nifti (a chunked ``readinto``) against igzip's own ``readinto``
  (which reads the whole image into one bytes object, then copies it);
- ``pick``: the in-mask voxels as (time, voxel) in Fortran order (``denoise.in_mask_series``)
  against boolean indexing in C order, ``data[mask].T``;
- ``write``: the result put back and saved (``denoise.unmasked`` into the input's memory, then
  ``io.save_nifti``) against a C-ordered ``np.zeros`` image filled by ``out[mask] = values``.

Prints CPU seconds (user + system), peak RSS and the ratio plain / fmriflow per stage.

    python benchmarks/denoise_layout.py [--volumes 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPE = (91, 109, 91)


def _write_run(folder: Path, volumes: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array(SHAPE, np.float32)[:, None, None, None] / 2
    mask = (((grid - centre) / (centre * 0.62)) ** 2).sum(axis=0) <= 1  # an ellipsoid, ~26% of the grid
    data = np.zeros((*SHAPE, volumes), np.float32, order="F")
    data[mask] = rng.normal(1000, 20, (int(mask.sum()), volumes)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), folder / "bold.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "mask.nii.gz")


def _case(name: str, folder: Path) -> None:
    """One stage one way, in this process; prints its CPU seconds and peak RSS as JSON."""
    import nibabel as nib
    from isal import igzip

    from fmriflow import io
    from fmriflow.denoise import in_mask_series, unmasked

    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0
    if name.startswith("write"):
        data = np.asarray(io.load_nifti(folder / "bold.nii.gz").dataobj, dtype=np.float32)
        series = in_mask_series(data, mask)
    start = resource.getrusage(resource.RUSAGE_SELF)
    if name == "read_fmriflow":
        io.load_nifti(folder / "bold.nii.gz")
    elif name == "read_plain":
        with igzip.open(folder / "bold.nii.gz", "rb") as fh:
            holder = nib.FileHolder(fileobj=fh)
            np.asanyarray(nib.Nifti1Image.from_file_map({"header": holder, "image": holder}, mmap=False).dataobj)
    elif name.startswith("pick"):
        data = np.asarray(io.load_nifti(folder / "bold.nii.gz").dataobj, dtype=np.float32)
        start = resource.getrusage(resource.RUSAGE_SELF)
        in_mask_series(data, mask) if name == "pick_fmriflow" else data[mask].T
    elif name == "write_fmriflow":
        io.save_nifti(nib.Nifti1Image(unmasked(series, mask, reuse=data), np.eye(4)), folder / "out.nii.gz")
    elif name == "write_plain":
        del data
        out = np.zeros((*SHAPE, series.shape[0]), np.float32)
        out[mask] = series.T  # the same values: only the layout differs
        io.save_nifti(nib.Nifti1Image(out, np.eye(4)), folder / "out.nii.gz")
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
    print(json.dumps({"cpu_s": cpu, "peak_mb": end.ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="fmriflow_denoise_layout_"))
    if args.case:
        _case(args.case, folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_run(folder, args.volumes)
    print(f"{args.volumes} volumes of {SHAPE}, in {folder}")
    for stage in ("read", "pick", "write"):
        found = {}
        for way in ("plain", "fmriflow"):
            out = subprocess.run([sys.executable, __file__, "--workdir", str(folder), "--case", f"{stage}_{way}"],
                                 check=True, capture_output=True, text=True).stdout
            found[way] = json.loads(out.strip().splitlines()[-1])
        ratio = found["plain"]["cpu_s"] / max(found["fmriflow"]["cpu_s"], 1e-9)
        print(f"{stage:6s} plain {found['plain']['cpu_s']:6.2f} CPU s ({found['plain']['peak_mb']:5.0f} MB peak)   "
              f"fmriflow {found['fmriflow']['cpu_s']:6.2f} CPU s ({found['fmriflow']['peak_mb']:5.0f} MB peak)   "
              f"ratio {ratio:4.1f}x")


if __name__ == "__main__":
    main()
