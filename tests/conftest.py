"""Shared fixtures: the A424 atlas (through the product's own fetch) and small synthetic images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ATLASES = REPO.parent / "shared" / "data" / "atlases"


@pytest.fixture(scope="session")
def atlas_dir() -> Path:
    """A folder holding the verified A424 files.

    Uses FMRIFLOW_ATLAS_DIR, else the reference copy in ../shared, else the product's
    own download into the cache; fails (never skips) when none is possible.
    """
    from fmriflow.atlas import ATLAS_DIR_ENV, fetch_a424

    source = os.environ.get(ATLAS_DIR_ENV) or (str(SHARED_ATLASES) if SHARED_ATLASES.is_dir() else None)
    files = fetch_a424(REPO / "resources" / "atlases" / "A424", source)
    return files["labels_img"].parent


@pytest.fixture(scope="session")
def a424_img(atlas_dir) -> nib.Nifti1Image:
    return nib.load(atlas_dir / "A424+2mm.nii.gz")


@pytest.fixture(scope="session")
def a424_labels(atlas_dir):
    from fmriflow.atlas import a424_labels_table

    return a424_labels_table(atlas_dir / "A424_Coordinates.dat")


def random_bold(shape, n_t, affine, seed=0, mean=100.0):
    rng = np.random.default_rng(seed)
    data = (mean + rng.standard_normal((*shape, n_t))).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    return img


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's small-model tests on one intra-op thread.

    Toy models gain nothing from a second thread, and on a busy 2-core machine the threads'
    hand-offs cost seconds per step (measured: 0.04 s a step on one thread, 4 s on two).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The name of an idle node of a SLURM cluster that answers here (.ci/slurm-cluster.sh).

    Skips when none answers, unless FMRIFLOW_REQUIRE_SLURM=1 (CI), where it fails instead.
    """
    import shutil
    import subprocess

    problem = None
    if shutil.which("sinfo") is None:
        problem = "sinfo is not on PATH"
    else:
        proc = subprocess.run(["sinfo", "--noheader", "--format", "%N %t"], capture_output=True, text=True,
                              timeout=60)
        idle = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:] in (["idle"], ["mix"])]
        if proc.returncode != 0:
            problem = f"sinfo failed: {proc.stderr.strip()}"
        elif not idle:
            problem = f"no idle SLURM node: {proc.stdout.strip()!r}"
    if problem is None:
        return idle[0]
    if os.environ.get("FMRIFLOW_REQUIRE_SLURM") == "1":
        pytest.fail(f"FMRIFLOW_REQUIRE_SLURM=1 but no SLURM cluster answers ({problem}); "
                    "start one with `bash .ci/slurm-cluster.sh` (as root)")
    pytest.skip(f"no SLURM cluster ({problem}); `bash .ci/slurm-cluster.sh` starts one")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, atlas_dir, a424_img):
    """One DAG run with every option on: a second atlas, partial and tangent FC, dynamic FC, and
    a QC threshold between the two largest mean FDs, so that exactly one run is excluded.

    Session-wide: the DAG tests (test_workflow.py) and the report's browser test share it.
    """
    from test_workflow import coarse_atlas, demo_config, make_demo, run_snakemake

    base = tmp_path_factory.mktemp("wf")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=4, n_trs=60, seed=3)
    results = base / "results"
    truth = json.loads((demo / "ground_truth" / "ground_truth.json").read_text())["subjects"]
    high, second = sorted((s["mean_framewise_displacement"] for s in truth.values()), reverse=True)[:2]
    config = demo_config(
        demo, results,
        atlas={"extra": {"Groups": coarse_atlas(base / "atlas", a424_img)}},
        connectivity={"kinds": ["pearson", "partial", "tangent"], "sliding_window": {"window": 30, "step": 15}},
        qc={"max_mean_fd": (high + second) / 2},
    )
    proc = run_snakemake(base, config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return demo, results, base, config


def bids_app_paths(tmp_path: Path, bids_key: str, outputs: Mapping[str, str]) -> dict[str, Path]:
    """The paths a BIDS-App command test passes (fMRIPrep, QSIPrep, QSIRecon), under the keys its module uses.

    Made: the raw BIDS folder (key ``bids_key``), a FreeSurfer licence (``license``) and a TemplateFlow
    home (``tf``). Not made: ``outputs`` (key -> path relative to ``tmp_path``), the output and work
    folders, which building a command must not need to exist.
    """
    bids = tmp_path / "bids"
    bids.mkdir()
    license_file = tmp_path / "license.txt"
    license_file.write_text("user@example.org\n12345\n")
    tf = tmp_path / "templateflow"
    tf.mkdir()
    return {bids_key: bids, "license": license_file, "tf": tf, **{key: tmp_path / rel for key, rel in outputs.items()}}


def parse_bids_app_args(args: list[str], flags, valued, tool: str) -> tuple[list[str], dict]:
    """Positionals and options of a BIDS-App command line (fMRIPrep, QSIPrep, QSIRecon), every option
    checked against the tool's documented ``flags`` (no value) and ``valued`` (option -> 1 or "+" values)."""
    positionals, options, i = [], {}, 0
    while i < len(args):
        token = args[i]
        if token in flags:
            options[token] = True
            i += 1
        elif token in valued:
            values = []
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
                if valued[token] == 1:
                    break
            assert values, f"{token} has no value"
            options[token] = values if valued[token] == "+" else values[0]
        else:
            assert not token.startswith("-"), f"{token} is not a documented {tool} option"
            positionals.append(token)
            i += 1
    return positionals, options
