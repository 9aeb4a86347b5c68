"""Parcellation speed and memory: fmriflow against nilearn's NiftiLabelsMasker, side by side.

Writes one random float32 BOLD image (91 x 109 x 91 x 490 by default: UK Biobank size) as
.nii and .nii.gz, then times every case in its own subprocess so that each peak RSS is its
own. Prints seconds, ratios and the largest difference to nilearn's output.

    python benchmarks/parcellate.py [--volumes 490] [--workdir DIR]   # DIR: default under the system temp folder

The atlas comes from $FMRIFLOW_ATLAS_DIR, the cache or the pinned download (fmriflow.atlas).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    # name: (what it measures, input)
    "baseline": ("interpreter + imports only", None),
    "zlib_read": ("bare decompression, Python's gzip (zlib)", "gz"),
    "isal_read": ("bare decompression, ISA-L igzip", "gz"),
    "nibabel_load": ("nibabel load of the .nii.gz into an array", "gz"),
    "nilearn_gz": ("NiftiLabelsMasker from the .nii.gz", "gz"),
    "nilearn_mem": ("NiftiLabelsMasker on the image in memory", "mem"),
    "fmriflow_gz": ("fmriflow.parcellate from the .nii.gz", "gz"),
    "fmriflow_nii": ("fmriflow.parcellate from the .nii", "nii"),
    "fmriflow_mem": ("fmriflow.parcellate on the image in memory", "mem"),
}


def run_case(case: str, workdir: Path, atlas_dir: Path) -> dict:
    """Run inside the subprocess: time one case, save its output, report seconds and peak RSS."""
    import nibabel as nib

    from fmriflow.atlas import a424_labels_table

    atlas = str(atlas_dir / "A424+2mm.nii.gz")
    labels = a424_labels_table(atlas_dir / "A424_Coordinates.dat")
    gz, nii = workdir / "bold.nii.gz", workdir / "bold.nii"
    img = None
    if CASES[case][1] == "mem":  # read into RAM (no memory map) before the clock starts
        img = nib.load(nii, mmap=False)
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    reset_peak_rss()  # the peak reported is that of the case itself (plus the array, when in memory)
    if case.startswith("nilearn"):
        from nilearn.maskers import NiftiLabelsMasker
    if case.startswith("fmriflow"):
        from fmriflow.parcellate import parcellate

    out = None
    t0 = time.perf_counter()
    if case in ("zlib_read", "isal_read"):
        if case == "zlib_read":
            import gzip as module
        else:
            from isal import igzip as module
        with module.open(gz, "rb") as fh:
            while fh.read(64 << 20):
                pass
    elif case == "nibabel_load":
        np.asanyarray(nib.load(gz).dataobj)
    elif case.startswith("nilearn"):
        out = NiftiLabelsMasker(labels_img=atlas, strategy="mean").fit_transform(img if img is not None else str(gz))
    elif case.startswith("fmriflow"):
        source = {"fmriflow_gz": gz, "fmriflow_nii": nii, "fmriflow_mem": img}[case]
        out = parcellate(source, atlas, labels, min_coverage=0.0).timeseries.to_numpy()
    seconds = time.perf_counter() - t0
    if out is not None:
        np.save(workdir / f"out_{case}.npy", out)
    return {"seconds": seconds, "peak_rss": peak_rss()}


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_data(workdir: Path, atlas_dir: Path, volumes: int) -> int:
    import nibabel as nib

    from fmriflow.io import save_nifti

    atlas = nib.load(atlas_dir / "A424+2mm.nii.gz")
    gz, nii = workdir / "bold.nii.gz", workdir / "bold.nii"
    shape = (*atlas.shape, volumes)
    if not (gz.exists() and nii.exists() and nib.load(nii).shape == shape):
        rng = np.random.default_rng(0)
        data = rng.standard_normal(shape, dtype=np.float32)
        img = nib.Nifti1Image(data, atlas.affine)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, nii)
        save_nifti(img, gz)
    return int(np.prod(shape)) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=490)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmriflow-bench")
    parser.add_argument("--atlas-dir", type=Path, help="folder with the A424 files (default: fmriflow's atlas resolution)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="subset of cases to run")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.atlas_dir is None:
        from fmriflow.atlas import fetch_a424

        args.atlas_dir = fetch_a424("resources/atlases/A424", os.environ.get("FMRIFLOW_ATLAS_DIR"))["labels_img"].parent
    if args.case:
        print(json.dumps(run_case(args.case, args.workdir, args.atlas_dir)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    bold_bytes = make_data(args.workdir, args.atlas_dir, args.volumes)
    print(f"BOLD 91x109x91x{args.volumes} float32: {bold_bytes / 2**30:.2f} GiB in memory, "
          f".nii.gz {(args.workdir / 'bold.nii.gz').stat().st_size / 2**30:.2f} GiB; {os.cpu_count()} CPUs")
    results = {}
    for case in [c for c in CASES if c in args.cases or c == "baseline"]:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--workdir", str(args.workdir),
                               "--atlas-dir", str(args.atlas_dir)], capture_output=True, text=True, check=True)
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {case:<14} {results[case]['seconds']:8.2f} s   peak RSS {results[case]['peak_rss'] / 2**30:5.2f} GiB", flush=True)

    base = results["baseline"]["peak_rss"]
    ref = {kind: np.load(args.workdir / f"out_nilearn_{kind}.npy") for kind in ("gz", "mem") if f"nilearn_{kind}" in results}

    def diff(case: str) -> str:
        reference = ref.get("gz", ref.get("mem"))
        if reference is None:
            return "n/a"
        return f"{np.max(np.abs(np.load(args.workdir / f'out_{case}.npy') - reference)):.1e}"


    def ratio(a: str, b: str) -> str:
        return f"{results[b]['seconds'] / results[a]['seconds']:.1f}x" if a in results and b in results else "n/a"

    print("\ncase            what                                         seconds  extra memory / BOLD   max |diff| vs nilearn")
    for case, (what, kind) in CASES.items():
        if case not in results or case == "baseline":
            continue
        extra = (results[case]["peak_rss"] - base) / bold_bytes
        out = diff(case) if case.startswith(("fmriflow", "nilearn")) else ""
        print(f"{case:<15} {what:<44} {results[case]['seconds']:7.2f}   {extra:8.2f}x            {out}")
    print("\nratios (higher is better for fmriflow):")
    print(f"  fmriflow in memory vs nilearn in memory:  {ratio('fmriflow_mem', 'nilearn_mem')}   (target >= 10x)")
    print(f"  fmriflow .nii vs nilearn in memory:       {ratio('fmriflow_nii', 'nilearn_mem')}   (target >= 10x)")
    print(f"  fmriflow .nii.gz vs nilearn .nii.gz:      {ratio('fmriflow_gz', 'nilearn_gz')}   (target >= 5x)")
    if "fmriflow_gz" in results and "isal_read" in results:
        print(f"  fmriflow .nii.gz / bare ISA-L read:       {results['fmriflow_gz']['seconds'] / results['isal_read']['seconds']:.2f}   (target <= 1.3)")
        print(f"  bare zlib read / bare ISA-L read:         {ratio('isal_read', 'zlib_read')}")
    mem_extra = (results.get("fmriflow_mem", {}).get("peak_rss", base) - base) / bold_bytes
    print(f"  fmriflow in memory, peak / BOLD array:    {mem_extra:.2f}   (target <= 1.5, the array itself included)")


if __name__ == "__main__":
    main()
