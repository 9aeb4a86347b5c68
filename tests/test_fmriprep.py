"""preproc.mode fmriprep: the command against fMRIPrep's documented flags, the DAG with a stub runtime.

The stub container runtime and the stub fMRIPrep live in tests/stubs/ (test-only): they record
their arguments and write fMRIPrep-shaped files copied from the demo generator's derivatives.
The real ``fmriprep-docker`` wrapper is driven against a stub image when a Docker daemon answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import bids_app_paths, parse_bids_app_args

from fmriflow.errors import InputError
from fmriflow.io import read_tsv
from fmriflow.preproc.fmriprep import (
    default_image, expected_files, fmriprep_command, omp_threads, output_spaces, pinned_image, subject_outputs,
)

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "tests" / "stubs"

# fMRIPrep 25.2's options that take no value, and those that take one or more
# (fmriprep/cli/parser.py of that release; the only ones this module may emit).
FLAGS = {"--skip-bids-validation", "--notrack", "--fs-no-reconall", "--low-mem", "--sloppy"}
VALUED = {"--participant-label": "+", "--output-spaces": "+", "--nthreads": 1, "--omp-nthreads": 1, "--mem-mb": 1,
          "--mem_mb": 1, "-w": 1, "--work-dir": 1, "--fs-license-file": 1, "--dummy-scans": 1, "--random-seed": 1}


def section(**overrides):
    base = {"runtime": "apptainer", "executable": None, "image": None, "fs_license": None, "templateflow_home": None,
            "work_dir": None, "output_spaces": [], "fs_no_reconall": True, "threads": 8, "omp_nthreads": None,
            "mem_mb": 32000, "runtime_minutes": 1440, "extra_args": []}
    base.update(overrides)
    return base


def parse_fmriprep_args(args: list[str]) -> tuple[list[str], dict]:
    """Positionals and options of an fMRIPrep command line, checked against FLAGS / VALUED."""
    return parse_bids_app_args(args, FLAGS, VALUED, "fMRIPrep 25.2")


@pytest.fixture()
def paths(tmp_path):
    return bids_app_paths(tmp_path, "bids_dir", {"output_dir": "out/fmriprep", "work_dir": "work/sub-01"})


def test_apptainer_command(paths):
    cfg = section(fs_license=str(paths["license"]), templateflow_home=str(paths["tf"]),
                  output_spaces=["MNI152NLin2009cAsym:res-2", "MNI152NLin6Asym:res-2", "T1w"],
                  extra_args=["--dummy-scans", "4"])
    cmd = fmriprep_command(cfg, "01", threads=6, mem_mb=20000, bids_dir=paths["bids_dir"], output_dir=paths["output_dir"],
                           work_dir=paths["work_dir"], image="/images/fmriprep-25.2.2.sif", environ={})
    assert cmd[:5] == ["env", "APPTAINERENV_TEMPLATEFLOW_HOME=/templateflow", "apptainer", "run", "--cleanenv"]
    binds = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-B"]
    assert binds == [f"{paths['bids_dir']}:/data:ro", f"{paths['output_dir']}:/out", f"{paths['work_dir']}:/work",
                     f"{paths['license']}:/opt/freesurfer/license.txt:ro", f"{paths['tf']}:/templateflow"]
    image_at = cmd.index("/images/fmriprep-25.2.2.sif")
    positionals, options = parse_fmriprep_args(cmd[image_at + 1:])
    assert positionals == ["/data", "/out", "participant"]
    assert options == {
        "--participant-label": ["01"],
        "--output-spaces": ["MNI152NLin6Asym:res-2", "MNI152NLin2009cAsym:res-2", "T1w"],  # atlas grid first, once
        "--nthreads": "6", "--omp-nthreads": "5", "--mem-mb": "20000", "--skip-bids-validation": True,
        "--notrack": True, "--fs-no-reconall": True, "-w": "/work", "--fs-license-file": "/opt/freesurfer/license.txt",
        "--dummy-scans": "4",
    }
    assert cmd[-2:] == ["--dummy-scans", "4"]  # extra arguments last


def test_singularity_without_templateflow_and_with_reconall(paths):
    cfg = section(runtime="singularity", executable="/opt/bin/singularity", fs_no_reconall=False, omp_nthreads=2)
    env = {"FS_LICENSE": str(paths["license"])}
    cmd = fmriprep_command(cfg, "A1", threads=4, mem_mb=8000, bids_dir=paths["bids_dir"], output_dir=paths["output_dir"],
                           work_dir=paths["work_dir"], image="docker://nipreps/fmriprep:25.2.2", environ=env)
    assert cmd[:3] == ["/opt/bin/singularity", "run", "--cleanenv"]
    assert not any("TEMPLATEFLOW" in a for a in cmd)
    _, options = parse_fmriprep_args(cmd[cmd.index("docker://nipreps/fmriprep:25.2.2") + 1:])
    assert "--fs-no-reconall" not in options and options["--omp-nthreads"] == "2"
    assert options["--output-spaces"] == ["MNI152NLin6Asym:res-2"]
    # TEMPLATEFLOW_HOME from the environment is bound like the config value
    cmd = fmriprep_command(cfg, "A1", threads=4, mem_mb=8000, bids_dir=paths["bids_dir"], output_dir=paths["output_dir"],
                           work_dir=paths["work_dir"], image="x.sif", environ={**env, "TEMPLATEFLOW_HOME": str(paths["tf"])})
    assert cmd[1] == "SINGULARITYENV_TEMPLATEFLOW_HOME=/templateflow" and f"{paths['tf']}:/templateflow" in cmd


def test_docker_wrapper_command(paths):
    cfg = section(runtime="docker", fs_license=str(paths["license"]))
    cmd = fmriprep_command(cfg, "02", threads=2, mem_mb=9000, bids_dir=paths["bids_dir"], output_dir=paths["output_dir"],
                           work_dir=paths["work_dir"], image="nipreps/fmriprep:25.2.2", environ={"TEMPLATEFLOW_HOME": "/x"})
    assert cmd[0] == "fmriprep-docker"
    wrapper = {"-i": cmd[cmd.index("-i") + 1], "--no-tty": "--no-tty" in cmd}
    assert wrapper == {"-i": "nipreps/fmriprep:25.2.2", "--no-tty": True}
    rest = [a for a in cmd[1:] if a not in ("-i", "nipreps/fmriprep:25.2.2", "--no-tty")]
    positionals, options = parse_fmriprep_args(rest)
    assert positionals == [str(paths["bids_dir"]), str(paths["output_dir"]), "participant"]
    assert options["-w"] == str(paths["work_dir"]) and options["--fs-license-file"] == str(paths["license"])
    assert options["--mem_mb"] == "9000" and options["--nthreads"] == "2" and options["--omp-nthreads"] == "1"
    with pytest.raises(InputError, match="cannot bind a TemplateFlow folder"):
        fmriprep_command({**cfg, "templateflow_home": str(paths["tf"])}, "02", threads=2, mem_mb=9000, image="i",
                         bids_dir=paths["bids_dir"], output_dir=paths["output_dir"], work_dir=paths["work_dir"])


def test_refusals(paths):
    kwargs = dict(threads=2, mem_mb=4000, bids_dir=paths["bids_dir"], output_dir=paths["output_dir"], image="x.sif")
    with pytest.raises(InputError, match="fs_license is not set"):
        fmriprep_command(section(), "01", work_dir=paths["work_dir"], environ={}, **kwargs)
    with pytest.raises(InputError, match="licence file not found"):
        fmriprep_command(section(fs_license="/nonexistent/license.txt"), "01", work_dir=paths["work_dir"], **kwargs)
    with pytest.raises(InputError, match="must not lie inside the BIDS dataset"):
        fmriprep_command(section(fs_license=str(paths["license"])), "01", work_dir=paths["bids_dir"] / "work", **kwargs)
    with pytest.raises(ValueError, match="'runtime' must be one of"):
        fmriprep_command(section(runtime="podman", fs_license=str(paths["license"])), "01", work_dir=paths["work_dir"], **kwargs)


def test_pin_spaces_threads_and_outputs(tmp_path):
    assert pinned_image(REPO / "containers" / "fmriprep.yaml") == "nipreps/fmriprep:25.2.2"
    assert default_image("apptainer", "nipreps/fmriprep:25.2.2") == "docker://nipreps/fmriprep:25.2.2"
    assert default_image("docker", "nipreps/fmriprep:25.2.2") == "nipreps/fmriprep:25.2.2"
    (tmp_path / "pin.yaml").write_text("image: nipreps/fmriprep:latest\n")
    with pytest.raises(InputError, match="exact tag"):
        pinned_image(tmp_path / "pin.yaml")
    assert output_spaces(section()) == ["MNI152NLin6Asym:res-2"]
    assert [omp_threads(section(), n) for n in (1, 2, 8, 16)] == [1, 1, 7, 8]
    assert omp_threads(section(omp_nthreads=12), 4) == 4
    run = "sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-mb_run-03"
    files = expected_files("out", run)
    assert str(files.bold) == f"out/{run}_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
    assert str(files.mask) == f"out/{run}_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz"
    assert str(files.confounds) == f"out/{run}_desc-confounds_timeseries.tsv"
    outputs = subject_outputs("out", [run, "sub-02/func/sub-02_task-a", "sub-02/func/sub-02_task-b"])
    assert sorted(outputs) == ["01", "02"] and len(outputs["02"]) == 2 * 4 + 1 and outputs["02"][-1] == "out/sub-02.html"
    with pytest.raises(InputError, match="multi-echo"):
        expected_files("out", "sub-01/func/sub-01_task-rest_echo-1")


# --------------------------------------------------------------------------- the DAG




def _fmriprep_config(demo: Path, results: Path, tmp: Path, **fmriprep) -> dict:
    from test_workflow import demo_config

    license_file = tmp / "license.txt"
    license_file.write_text("user@example.org\n12345\n")
    (tmp / "templateflow").mkdir(exist_ok=True)
    config = demo_config(demo, results)
    config["preproc"] = {"mode": "fmriprep", "fmriprep": {
        "fs_license": str(license_file), "templateflow_home": str(tmp / "templateflow"), "threads": 2, "mem_mb": 6000,
        **fmriprep}}
    return config


def _printed_commands(stdout: str) -> list[list[str]]:
    lines = [line.removeprefix("Shell command: ") for line in stdout.splitlines()]
    return [shlex.split(line.split(" && ", 1)[1].rsplit(" > ", 1)[0]) for line in lines
            if line.startswith("mkdir -p ") and " run --cleanenv " in line]


@pytest.mark.integration
def test_dry_run_prints_one_fmriprep_command_per_subject(tmp_path, atlas_dir):
    from test_workflow import make_demo, run_snakemake

    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=4, n_trs=20, bold_res=4, seed=21)
    results = tmp_path / "results"
    config = _fmriprep_config(demo, results, tmp_path, output_spaces=["MNI152NLin2009cAsym:res-2"])
    proc = run_snakemake(tmp_path, config, "--dry-run", "--printshellcmds")
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = _printed_commands(proc.stdout)
    assert len(commands) == 4
    labels = []
    for cmd in commands:
        image = cmd.index("docker://nipreps/fmriprep:25.2.2")  # the pin in containers/fmriprep.yaml
        assert cmd[:4] == ["env", "APPTAINERENV_TEMPLATEFLOW_HOME=/templateflow", "apptainer", "run"]
        positionals, options = parse_fmriprep_args(cmd[image + 1:])
        assert positionals == ["/data", "/out", "participant"]
        labels.append(options["--participant-label"][0])
        assert options["--output-spaces"] == ["MNI152NLin6Asym:res-2", "MNI152NLin2009cAsym:res-2"]
        assert options["--nthreads"] == "2" and options["--omp-nthreads"] == "1"
        assert int(options["--mem-mb"]) > 0
        assert {"--skip-bids-validation", "--notrack", "--fs-no-reconall"} <= set(options)
        binds = dict(reversed(cmd[i + 1].split(":")[:2]) for i, a in enumerate(cmd[:image]) if a == "-B")
        assert binds["/data"] == str(demo / "bids") and binds["/out"] == str(results / "fmriprep")
        assert binds["/work"] == str(results / "work" / "fmriprep" / f"sub-{labels[-1]}")
    assert sorted(labels) == ["01", "02", "03", "04"]  # one per subject, in the order Snakemake lists them
    # the whole chain is planned before fMRIPrep ran: one denoise job per run
    assert len(re.findall(r"^rule denoise:", proc.stdout, flags=re.M)) == 4


@pytest.mark.integration
def test_stub_runtime_through_the_dag(tmp_path, atlas_dir, monkeypatch):
    """fMRIPrep's job runs the stub apptainer; the chain goes on to connectivity from its outputs."""
    from test_workflow import make_demo, run_snakemake

    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=30, bold_res=2, seed=23)
    results = tmp_path / "results"
    image = tmp_path / "fmriprep-25.2.2.sif"
    image.write_bytes(b"stub image")
    config = _fmriprep_config(demo, results, tmp_path, image=str(image))
    # 30 volumes leave 2 and 4 degrees of freedom after 24P: no minimum (denoising would refuse them)
    config["qc"] = {"min_degrees_of_freedom": None}
    monkeypatch.setenv("PATH", f"{STUBS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FMRIFLOW_STUB_SOURCE", str(demo / "derivatives" / "fmriprep"))
    runs = sorted(p.name.removesuffix("_bold.nii.gz") for p in (demo / "bids").glob("sub-*/func/*_bold.nii.gz"))
    targets = [str(results / "fmriflow" / r.split("_")[0] / "func" /
                   f"{r}_space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_relmat.tsv") for r in runs]
    proc = run_snakemake(tmp_path, config, *targets)
    assert proc.returncode == 0, proc.stderr[-5000:]
    for label in ("01", "02"):
        work = results / "work" / "fmriprep" / f"sub-{label}"
        runtime = json.loads((work / "stub_apptainer_call.json").read_text())
        assert runtime["image"] == str(image) and runtime["cleanenv"]
        assert runtime["container_env"] == {"TEMPLATEFLOW_HOME": "/templateflow"}
        assert [b[2] for b in runtime["binds"] if b[1] in ("/data", "/opt/freesurfer/license.txt")] == ["ro", "ro"]
        call = json.loads((work / "stub_fmriprep_call.json").read_text())
        assert call["parsed"]["participant_label"] == [label] and call["parsed"]["nprocs"] == 2
        assert call["TEMPLATEFLOW_HOME"] == str(tmp_path / "templateflow") and call["extra"] == []
        # fMRIPrep's outputs are where the rule declared them, and the chain read them
        bold = results / "fmriprep" / f"sub-{label}" / "func" / f"sub-{label}_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"
        source = demo / "derivatives" / "fmriprep" / bold.relative_to(results / "fmriprep")
        assert bold.read_bytes() == source.read_bytes()
    for target in targets:
        fc = read_tsv(target, index_col=0).to_numpy()
        assert fc.shape == (424, 424) and np.isfinite(fc).sum() > 300**2 and np.nanmax(np.abs(fc)) <= 1 + 1e-9
        sidecar = json.loads(Path(target.replace(".tsv", ".json")).read_text())
        assert sidecar["Provenance"]["Step"] == "connectivity"
    preproc_sidecar = next((results / "fmriflow").glob("sub-01/func/*_desc-preproc_qc.json"))
    assert str(results / "fmriprep") in preproc_sidecar.read_text()


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _docker_answers(), reason="no Docker daemon answers (docker info)")
def test_fmriprep_docker_wrapper_with_stub_image(tmp_path, atlas_dir):
    """The real fmriprep-docker wrapper runs a stub image tagged as the pinned fMRIPrep image.

    Public registries are unreachable in CI: the stub image is built FROM a local base image
    with python3 and procps (the wrapper runs `free`), named by $FMRIFLOW_TEST_DOCKER_BASE
    (default debian:bookworm-slim), e.g. `debootstrap --variant=minbase --include=python3,procps
    bookworm rootfs` and `tar -C rootfs -c . | docker import - NAME`.
    """
    from fmriflow.preproc.fmriprep import fmriprep_command
    from test_workflow import make_demo

    base = os.environ.get("FMRIFLOW_TEST_DOCKER_BASE", "debian:bookworm-slim")
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode:
        pytest.skip(f"base image {base} is not available locally (set FMRIFLOW_TEST_DOCKER_BASE)")
    tag = pinned_image(REPO / "containers" / "fmriprep.yaml")
    existing = subprocess.run(["docker", "image", "inspect", "--format", "{{index .Config.Labels \"fmriflow.stub\"}}", tag],
                              capture_output=True, text=True)
    if existing.returncode == 0 and existing.stdout.strip() != "true":
        pytest.skip(f"{tag} exists and is not the stub: not overwriting a real fMRIPrep image")
    demo = make_demo(tmp_path / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=2, seed=29)
    context = tmp_path / "image"
    shutil.copytree(demo / "derivatives" / "fmriprep" / "sub-01", context / "stub" / "source" / "sub-01")
    shutil.copy(STUBS / "fmriprep", context / "stub" / "fmriprep")
    (context / "Dockerfile").write_text(  # one file-system layer: cheap with any storage driver
        f"FROM {base}\nLABEL fmriflow.stub=true\nENV FMRIFLOW_STUB_SOURCE=/stub/source\nCOPY stub /stub\n"
        "ENTRYPOINT [\"python3\", \"/stub/fmriprep\"]\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True)
    license_file = tmp_path / "license.txt"
    license_file.write_text("user@example.org\n12345\n")
    out, work = tmp_path / "results" / "fmriprep", tmp_path / "work" / "sub-01"
    work.mkdir(parents=True)
    cfg = section(runtime="docker", fs_license=str(license_file))
    cmd = fmriprep_command(cfg, "01", threads=2, mem_mb=8000, bids_dir=demo / "bids", output_dir=out, work_dir=work,
                           image=tag, environ={})
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RUNNING: docker run" in proc.stdout
    call = json.loads((work / "stub_fmriprep_call.json").read_text())
    assert call["argv"][:3] == ["/data", "/out", "participant"]
    # the wrapper binds the licence where fMRIPrep looks by default, and maps -w to /scratch
    assert call["license"] == "/opt/freesurfer/license.txt" and call["parsed"]["work_dir"] == "/scratch"
    assert call["parsed"]["participant_label"] == ["01"] and call["parsed"]["mem_mb"] == 8000
    files = expected_files(out, "sub-01/func/sub-01_task-rest")
    assert files.bold.is_file() and files.mask.is_file() and files.confounds.is_file()
