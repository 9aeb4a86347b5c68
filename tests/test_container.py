"""The project image runs the workflow and gets the host's results, byte for byte.

The same small DAG (raw BIDS to every run's FC, run QC and group FC) runs twice from the
repository's Snakefile: on the host, and inside the project image (containers/Dockerfile, built
by .ci/container-check.sh) with no network. Every data artefact (NIfTI, TSV, NPY) must be
byte-identical. That is the right meaning of "equal" here, not a tolerance: the image installs
the same locked wheels (numpy, scipy and their OpenBLAS, nibabel, nilearn) that the host's
environment was made from, on the same CPU, and every step is seeded and single-threaded per
job; a difference in any bit therefore means the image's environment differs from the locked
one, which is what this test is for. Sidecars are compared on their non-provenance fields
(provenance holds timestamps and the interpreter's patch version).

Skipped when no Docker daemon answers or the image is missing, unless FMRIFLOW_REQUIRE_DOCKER=1
(CI), where either is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_caching import data_digests, fc_targets, small_config, snakemake
from test_workflow import REPO, make_demo

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("FMRIFLOW_IMAGE", "fmriflow:cpu")
REQUIRED = os.environ.get("FMRIFLOW_REQUIRE_DOCKER") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"FMRIFLOW_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        _unavailable("there is no docker client")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        _unavailable("no Docker daemon answers (start it, or run .ci/container-check.sh)")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=60).returncode != 0:
        _unavailable(f"image {IMAGE} is missing (build it with .ci/container-check.sh image)")
    return IMAGE


@pytest.fixture(scope="module")
def runs(tmp_path_factory, atlas_dir, image):
    """(host results, container results, config of each) of the same DAG on the same demo."""
    base = tmp_path_factory.mktemp("container")
    demo = make_demo(base / "demo", atlas_dir, n_subjects=2, n_trs=60, seed=11)

    host = small_config(demo, base / "host")
    start = time.monotonic()
    proc = snakemake(base, host, *fc_targets(host))
    assert proc.returncode == 0, proc.stderr[-5000:]
    host_s = time.monotonic() - start

    inside = small_config(demo, base / "container")
    config_file = base / "container.yaml"
    config_file.write_text(json.dumps(inside))
    # same paths inside as outside: the config, the repository (its Snakefile, rules and
    # scripts; the fmriflow package is the image's own) and the atlas folder
    mounts = [f"{base}:{base}", f"{REPO}:{REPO}:ro", f"{atlas_dir}:{atlas_dir}:ro"]
    cmd = ["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
           "-e", "HOME=/tmp", "-e", f"FMRIFLOW_ATLAS_DIR={atlas_dir}", *_blas_env(), "-w", str(base),
           *[arg for m in mounts for arg in ("-v", m)], image,
           "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(base / "container-work"),
           "--configfile", str(config_file), "--cores", "2", "--rerun-incomplete", *fc_targets(inside)]
    (base / "container-work").mkdir()
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"same DAG: {host_s:.0f} s on the host, {time.monotonic() - start:.0f} s in {image}")  # pytest -rP shows it
    return Path(host["output_dir"]), Path(inside["output_dir"]), demo


def _blas_env() -> list[str]:
    """The host's OPENBLAS_* settings as ``docker run -e`` arguments. OpenBLAS picks its kernels by CPU at run
    time unless OPENBLAS_CORETYPE forces a type, and kernels round differently (the denoising product differs
    in the last bit of a few float32 voxels); Apptainer passes them in, plain Docker does not."""
    return [arg for k, v in os.environ.items() if k.startswith("OPENBLAS_") for arg in ("-e", f"{k}={v}")]


def test_image_runs_the_locked_environment(image):
    lock = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    probe = "import importlib.metadata as m; print(m.version('numpy'), m.version('scipy'), m.version('nilearn'), m.version('torch'))"
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python", "-c", probe],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    numpy, scipy, nilearn, torch = out.stdout.split()
    assert (numpy, scipy, nilearn) == (lock["numpy"], lock["scipy"], lock["nilearn"])
    assert torch.split("+")[0] == lock["torch"]


def test_container_artefacts_equal_host(runs):
    host, inside, _ = runs
    host_digests, inside_digests = data_digests(host), data_digests(inside)
    assert len(host_digests) >= 2 * 8, sorted(host_digests)  # two runs' BOLD, masks, time series, FC ...
    assert sorted(inside_digests) == sorted(host_digests)
    differ = [name for name in host_digests if host_digests[name] != inside_digests[name]]
    assert not differ, f"artefacts that differ between host and container: {differ}"


def test_container_sidecars_equal_host_but_provenance(runs):
    host, inside, _ = runs
    sidecars = sorted(p.relative_to(host) for p in (host / "fmriflow").rglob("*.json"))
    assert sidecars
    for rel in sidecars:
        ours, theirs = (json.loads((root / rel).read_text()) for root in (host, inside))
        ours.pop("Provenance", None), theirs.pop("Provenance", None)
        text = json.dumps(theirs).replace(str(inside), str(host))  # output paths named inside
        assert json.loads(text) == ours, rel


def test_rules_run_in_the_project_image_under_apptainer(runs, image, atlas_dir, tmp_path):
    """``--software-deployment-method apptainer`` runs every job in the image the config's
    ``container`` names. Apptainer is not packaged for Debian 12: a test double
    (tests/stubs/apptainer_over_docker) runs its ``exec`` calls through Docker, in the real
    image, and records them."""
    host, _, demo = runs
    sif = tmp_path / "fmriflow.sif"
    sif.write_text("stands for the project image; the test double runs the Docker image instead\n")
    config = {**small_config(demo, tmp_path / "results"), "container": str(sif)}
    calls = tmp_path / "apptainer_calls.jsonl"
    env = {**os.environ, "PATH": f"{REPO / 'tests/stubs/apptainer_over_docker'}:{os.environ['PATH']}",
           "STUB_DOCKER_IMAGE": image, "STUB_APPTAINER_LOG": str(calls), "FMRIFLOW_ATLAS_DIR": str(atlas_dir)}
    env.pop("PYTHONPATH", None)  # as on a clean host: fmriflow inside comes from the image
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config))
    (tmp_path / "work").mkdir()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "work"),
           "--configfile", str(cfg), "--cores", "2", "--software-deployment-method", "apptainer",
           "--apptainer-args", f"--bind {atlas_dir}", *fc_targets(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    records = [json.loads(line) for line in calls.read_text().splitlines()]
    jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", proc.stdout + proc.stderr, re.M)
    assert len(records) == len(jobs) > 5, (len(records), jobs)  # one container per job, every job
    assert {r["image"] for r in records} == {str(sif)}
    inside = data_digests(tmp_path / "results")
    assert inside == data_digests(host)
