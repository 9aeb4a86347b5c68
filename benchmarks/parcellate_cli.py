"""``fmriflow parcellate`` as a user runs it (a fresh process) against nilearn's masker in a fresh process.

Both sides pay the interpreter's start, their imports, reading the BOLD and writing the result:
fmriflow writes its TSV and provenance sidecar (which hashes the BOLD), nilearn's side saves its
array with numpy. The cases alternate, each repeated, and the median of each is compared. Also
printed: the interpreter alone, and the same ``fmriflow parcellate`` on a 2-volume BOLD (start-up
and fixed costs: imports, atlas, sidecar), so that start-up can be told from work.

    python benchmarks/parcellate_cli.py [--volumes 200] [--repeats 3] [--workdir DIR]

The BOLD is random float32 on the A424 grid, written as .nii (``parcellate.py`` makes it).
The atlas comes from $FMRIFLOW_ATLAS_DIR, the cache or the pinned download (fmriflow.atlas).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parcellate import make_data  # noqa: E402  (the sibling benchmark writes the same BOLD)

NILEARN = (
    "import sys\n"
    "import numpy as np\n"
    "from nilearn.maskers import NiftiLabelsMasker\n"
    "np.save(sys.argv[3], NiftiLabelsMasker(labels_img=sys.argv[1], strategy='mean').fit_transform(sys.argv[2]))\n"
)


def commands(workdir: Path, atlas: Path) -> dict[str, list[str]]:
    bold = workdir / "bold.nii"
    return {
        "interpreter": [sys.executable, "-c", "pass"],
        "start-up": _fmriflow(workdir / "bold_2vol.nii", atlas, workdir / "cli_2vol_timeseries.tsv"),
        "fmriflow": _fmriflow(bold, atlas, workdir / "cli_timeseries.tsv"),
        "nilearn": [sys.executable, "-c", NILEARN, str(atlas), str(bold), str(workdir / "cli_nilearn.npy")],
    }


def _fmriflow(bold: Path, atlas: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fmriflow.cli", "parcellate", "--bold", str(bold), "--atlas", str(atlas), "--out", str(out)]


def make_small(workdir: Path) -> None:
    """The first 2 volumes of the BOLD, for the start-up case."""
    import nibabel as nib

    img = nib.load(workdir / "bold.nii")
    nib.save(img.slicer[..., :2], workdir / "bold_2vol.nii")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (nilearn's take about a minute each)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fmriflow-bench-cli")
    parser.add_argument("--atlas-dir", type=Path, help="folder with the A424 files (default: fmriflow's atlas resolution)")
    args = parser.parse_args()
    if args.atlas_dir is None:
        from fmriflow.atlas import fetch_a424

        args.atlas_dir = fetch_a424("resources/atlases/A424", os.environ.get("FMRIFLOW_ATLAS_DIR"))["labels_img"].parent
    args.workdir.mkdir(parents=True, exist_ok=True)
    bold_bytes = make_data(args.workdir, args.atlas_dir, args.volumes)
    make_small(args.workdir)
    cmds = commands(args.workdir, args.atlas_dir / "A424+2mm.nii.gz")
    print(f"BOLD 91x109x91x{args.volumes} float32 .nii, {bold_bytes / 2**30:.2f} GiB; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at the start")

    seconds: dict[str, list[float]] = {case: [] for case in cmds}
    timed(cmds["fmriflow"])  # the BOLD into the page cache and bytecode compiled, for both sides alike
    for _ in range(args.repeats):
        for case, cmd in cmds.items():  # alternating, so a change of load hits every case
            seconds[case].append(timed(cmd))
    median = {case: statistics.median(values) for case, values in seconds.items()}
    for case, values in seconds.items():
        print(f"  {case:<12} median {median[case]:7.2f} s   runs {' '.join(f'{v:.2f}' for v in values)}")

    ours = np.genfromtxt(args.workdir / "cli_timeseries.tsv", delimiter="\t", skip_header=1)
    reference = np.load(args.workdir / "cli_nilearn.npy")
    print(f"\nmax |fmriflow - nilearn|: {np.max(np.abs(ours - reference)):.1e}")
    print(f"fmriflow parcellate start-up (the 2-volume run): {median['start-up']:.2f} s of {median['fmriflow']:.2f} s")
    print(f"nilearn process / fmriflow parcellate process:  {median['nilearn'] / median['fmriflow']:.1f}x   "
          f"(target >= 10x); load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
