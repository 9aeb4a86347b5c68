"""brainsymphony.sc.source qsiprep: QSIPrep's and QSIRecon's commands against their documented
options, the atlas dataset QSIRecon reads, the connectome handed on, and the DAG with a stub runtime.

The stubs (tests/stubs/apptainer, qsiprep, qsirecon; test doubles only) parse the two tools'
command lines, refuse what they refuse, record their calls and write QSIPrep- / QSIRecon-shaped
files; the QSIRecon stub takes its counts from the demo's simulated connectomes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.io import loadmat, savemat
from conftest import bids_app_paths, parse_bids_app_args

from fmriflow.errors import InputError
from fmriflow.io import read_tsv
from fmriflow.sc.qsiprep import (
    MRTRIX_MEASURES, check_measure, image_for, pinned_images, qsiprep_command, qsirecon_command, recon_measures,
    subject_dwi,
)
from fmriflow.sc.qsirecon import collect_connectome, write_atlas_dataset

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "tests" / "stubs"

# The 26.0.0 releases' options (qsiprep/cli/parser.py and qsirecon/cli/parser.py, rendered on their
# "Usage" and "Quickstart" pages) that fmriflow may emit: flags without a value, and those with one
# or more values. Anything else in a command line fails the test.
COMMON_VALUED = {"--participant-label": "+", "--nthreads": 1, "--omp-nthreads": 1, "--mem-mb": 1, "-w": 1,
                 "--fs-license-file": 1, "--session-id": "+", "--denoise-method": 1}
QSIPREP = ({"--skip-bids-validation", "--notrack", "--low-mem"}, {**COMMON_VALUED, "--output-resolution": 1})
QSIRECON = ({"--notrack", "--low-mem"}, {**COMMON_VALUED, "--recon-spec": 1, "--atlases": "+", "--datasets": "+"})


def parse_args(args: list[str], documented) -> tuple[list[str], dict]:
    """Positionals and options of a QSIPrep / QSIRecon command line, checked against ``documented``."""
    return parse_bids_app_args(args, *documented, "QSIPrep/QSIRecon")


def section(**overrides):
    base = {"runtime": "apptainer", "executable": None, "qsiprep_image": None, "qsirecon_image": None,
            "fs_license": None, "templateflow_home": None, "work_dir": None, "output_resolution": 2,
            "recon_spec": "mrtrix_multishell_msmt_noACT", "atlas_image": None, "threads": 8, "omp_nthreads": None,
            "mem_mb": 32000, "runtime_minutes": 1440, "qsiprep_args": [], "qsirecon_args": []}
    base.update(overrides)
    return base


def binds_of(cmd: list[str], flag: str = "-B") -> dict[str, tuple[str, str]]:
    """Container path -> (host path, mode) of a command's binds."""
    out = {}
    for i, token in enumerate(cmd):
        if token == flag:
            host, inside, *mode = cmd[i + 1].split(":")
            out[inside] = (host, mode[0] if mode else "rw")
    return out


@pytest.fixture()
def paths(tmp_path):
    return bids_app_paths(tmp_path, "bids", {"qsiprep": "out/qsiprep", "qsirecon": "out/qsirecon",
                                             "work": "work/sub-01", "atlases": "atlases"})


def test_qsiprep_command(paths):
    cfg = section(fs_license=str(paths["license"]), templateflow_home=str(paths["tf"]), output_resolution=1.25,
                  qsiprep_args=["--denoise-method", "patch2self"])
    cmd = qsiprep_command(cfg, "01", threads=6, mem_mb=20000, bids_dir=paths["bids"], output_dir=paths["qsiprep"],
                          work_dir=paths["work"], image="/images/qsiprep-26.0.0.sif", environ={})
    assert cmd[:6] == ["env", "APPTAINERENV_TEMPLATEFLOW_HOME=/templateflow", "apptainer", "run", "--containall",
                       "--writable-tmpfs"]
    assert binds_of(cmd) == {"/data": (str(paths["bids"]), "ro"), "/out": (str(paths["qsiprep"]), "rw"),
                             "/work": (str(paths["work"]), "rw"),
                             "/opt/freesurfer/license.txt": (str(paths["license"]), "ro"),
                             "/templateflow": (str(paths["tf"]), "rw")}
    positionals, options = parse_args(cmd[cmd.index("/images/qsiprep-26.0.0.sif") + 1:], QSIPREP)
    assert positionals == ["/data", "/out", "participant"]
    assert options == {"--participant-label": ["01"], "--output-resolution": "1.25", "--nthreads": "6",
                       "--omp-nthreads": "5", "--mem-mb": "20000", "--skip-bids-validation": True, "--notrack": True,
                       "-w": "/work", "--fs-license-file": "/opt/freesurfer/license.txt",
                       "--denoise-method": "patch2self"}
    assert cmd[-2:] == ["--denoise-method", "patch2self"]  # extra arguments last


def test_qsirecon_command_with_a_spec_file_and_docker(paths, tmp_path):
    spec = tmp_path / "my_spec.yaml"
    spec.write_text("name: mine\nnodes:\n- action: connectivity\n  qsirecon_suffix: Mine\n  parameters:\n"
                    "    tck2connectome:\n    - measure: mycount\n")
    cfg = section(fs_license=str(paths["license"]), recon_spec=str(spec), omp_nthreads=2,
                  qsirecon_args=["--session-id", "1"])
    kwargs = dict(threads=4, mem_mb=8000, qsiprep_dir=paths["qsiprep"], output_dir=paths["qsirecon"],
                  work_dir=paths["work"], atlas_dataset=paths["atlases"], atlas="A424", environ={})
    cmd = qsirecon_command(cfg, "01", image="docker://pennlinc/qsirecon:26.0.0", **kwargs)
    assert cmd[:4] == ["apptainer", "run", "--containall", "--writable-tmpfs"]
    assert not any("TEMPLATEFLOW" in a for a in cmd)
    binds = binds_of(cmd)
    assert binds["/data"] == (str(paths["qsiprep"]), "ro") and binds["/atlases"] == (str(paths["atlases"]), "ro")
    assert binds["/recon_spec.yaml"] == (str(spec), "ro") and binds["/out"] == (str(paths["qsirecon"]), "rw")
    positionals, options = parse_args(cmd[cmd.index("docker://pennlinc/qsirecon:26.0.0") + 1:], QSIRECON)
    assert positionals == ["/data", "/out", "participant"]
    assert options == {"--participant-label": ["01"], "--recon-spec": "/recon_spec.yaml", "--atlases": ["A424"],
                       "--datasets": ["fmriflowatlases=/atlases"], "--nthreads": "4", "--omp-nthreads": "2",
                       "--mem-mb": "8000", "--notrack": True, "-w": "/work",
                       "--fs-license-file": "/opt/freesurfer/license.txt", "--session-id": ["1"]}
    # docker run: the same arguments, -v binds, TemplateFlow's home as -e, the caller's user
    docker = qsirecon_command({**cfg, "runtime": "docker", "recon_spec": "mrtrix_multishell_msmt_ACT-hsvs",
                               "templateflow_home": str(paths["tf"])}, "01", image="pennlinc/qsirecon:26.0.0", **kwargs)
    assert docker[:3] == ["docker", "run", "--rm"]
    assert docker[docker.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert docker[docker.index("-e") + 1] == "TEMPLATEFLOW_HOME=/templateflow"
    assert binds_of(docker, "-v")["/templateflow"] == (str(paths["tf"]), "rw") and "/recon_spec.yaml" not in binds_of(docker, "-v")
    _, options = parse_args(docker[docker.index("pennlinc/qsirecon:26.0.0") + 1:], QSIRECON)
    assert options["--recon-spec"] == "mrtrix_multishell_msmt_ACT-hsvs"


def test_refusals_name_the_key_or_file(paths, tmp_path):
    kwargs = dict(threads=2, mem_mb=4000, bids_dir=paths["bids"], output_dir=paths["qsiprep"], image="x.sif")
    with pytest.raises(InputError, match="qsiprep.fs_license") as err:
        qsiprep_command(section(), "01", work_dir=paths["work"], environ={}, **kwargs)
    assert "fs_license is not set" in str(err.value)
    with pytest.raises(InputError, match="licence file not found"):
        qsiprep_command(section(fs_license="/nonexistent/license.txt"), "01", work_dir=paths["work"], **kwargs)
    with pytest.raises(InputError, match="must not lie inside the input dataset"):
        qsiprep_command(section(fs_license=str(paths["license"])), "01", work_dir=paths["bids"] / "w", **kwargs)
    with pytest.raises(ValueError, match="'runtime' must be one of"):
        qsiprep_command(section(runtime="podman", fs_license=str(paths["license"])), "01", work_dir=paths["work"], **kwargs)
    with pytest.raises(InputError, match=r"qsiprep image not found \(qsiprep.qsiprep_image\)"):
        image_for(section(qsiprep_image=str(tmp_path / "missing.sif")), "qsiprep", {})
    with pytest.raises(InputError, match="has no diffusion series"):
        subject_dwi(paths["bids"], "01")
    dwi = paths["bids"] / "sub-01" / "ses-1" / "dwi"
    dwi.mkdir(parents=True)
    (dwi / "sub-01_ses-1_dwi.nii.gz").write_bytes(b"")
    (dwi / "sub-01_ses-1_dwi.bval").write_text("0 1000\n")
    with pytest.raises(InputError, match="without its .bvec file"):
        subject_dwi(paths["bids"], "01")
    (dwi / "sub-01_ses-1_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    assert subject_dwi(paths["bids"], "01") == [dwi / "sub-01_ses-1_dwi.nii.gz"]
    with pytest.raises(InputError, match="qsiprep.recon_spec"):
        recon_measures("dsi_studio_gqi")  # no MRtrix3 connectome
    with pytest.raises(InputError, match=r"brainsymphony.sc.measure.*'radius2_count'.*'' was provided"):
        check_measure("mrtrix_multishell_msmt_noACT", "")
    assert recon_measures("mrtrix_singleshell_ss3t_noACT") == MRTRIX_MEASURES


def test_pins(tmp_path):
    pins = pinned_images(REPO / "containers" / "qsiprep.yaml")
    assert pins == {"qsiprep": "pennlinc/qsiprep:26.0.0", "qsirecon": "pennlinc/qsirecon:26.0.0"}
    assert image_for(section(), "qsirecon", pins) == "docker://pennlinc/qsirecon:26.0.0"
    assert image_for(section(runtime="docker"), "qsiprep", pins) == "pennlinc/qsiprep:26.0.0"
    (tmp_path / "pin.yaml").write_text("qsiprep: pennlinc/qsiprep:latest\nqsirecon: pennlinc/qsirecon@sha256:ab12\n")
    with pytest.raises(InputError, match="'qsiprep' must name an exact tag or digest"):
        pinned_images(tmp_path / "pin.yaml")


def _world_centroids(img) -> dict[int, np.ndarray]:
    data = np.asanyarray(img.dataobj)
    affine = img.header.get_qform() if int(img.header["sform_code"]) == 0 else img.affine
    return {int(v): nib.affines.apply_affine(affine, np.argwhere(data == v).mean(axis=0))
            for v in np.unique(data) if v}


def test_atlas_dataset_is_lps_without_sform_and_keeps_the_regions_in_place(tmp_path, atlas_dir, a424_labels):
    labels = tmp_path / "labels.tsv"
    a424_labels.to_csv(labels, sep="\t", index=False)
    files = write_atlas_dataset(atlas_dir / "A424+2mm.nii.gz", labels, "A424", tmp_path / "atlases")
    assert files["image"] == tmp_path / "atlases" / "tpl-MNI152NLin2009cAsym" / "tpl-MNI152NLin2009cAsym_atlas-A424_dseg.nii.gz"
    assert json.loads(files["description"].read_text())["DatasetType"] == "derivative"
    out = nib.load(files["image"])
    assert nib.aff2axcodes(out.header.get_qform()) == ("L", "P", "S") and int(out.header["sform_code"]) == 0
    assert not np.any(out.header.get_sform()[:3])  # srow_x, srow_y, srow_z
    # every region keeps its world position (centroids from each image's own voxel-to-world map)
    before, after = _world_centroids(nib.load(atlas_dir / "A424+2mm.nii.gz")), _world_centroids(out)
    assert sorted(before) == sorted(after) == list(range(1, 425))
    assert max(np.abs(before[k] - after[k]).max() for k in before) < 1e-6
    table = read_tsv(files["labels"])
    assert list(table.columns) == ["index", "name"] and table["index"].tolist() == list(range(1, 425))
    sidecar = json.loads(files["sidecar"].read_text())
    assert sidecar["SourceSpace"] == "MNI152NLin6Asym" and "taken as MNI152NLin2009cAsym" in sidecar["Transform"]
    with pytest.raises(InputError, match="alphanumeric"):
        write_atlas_dataset(atlas_dir / "A424+2mm.nii.gz", labels, "A424_x", tmp_path / "bad")


def test_collect_connectome_takes_the_one_file_holding_the_atlas(tmp_path):
    root = tmp_path / "qsirecon"
    counts = np.arange(9.0).reshape(3, 3)
    mine = root / "derivatives" / "qsirecon-MRtrix3_act-None" / "sub-01" / "dwi" / "sub-01_space-ACPC_connectivity.mat"
    other = root / "derivatives" / "qsirecon-DSIStudio" / "sub-01" / "dwi" / "sub-01_space-ACPC_connectivity.mat"
    for path, atlas in ((mine, "A424"), (other, "AAL116")):
        path.parent.mkdir(parents=True)
        savemat(path, {f"atlas_{atlas}_radius2_count_connectivity": counts, f"atlas_{atlas}_region_ids": [1, 2, 3]})
    out = tmp_path / "sc" / "sub-01_atlas-A424_connectivity.mat"
    collect_connectome(root, "01", "A424", out)
    assert np.array_equal(loadmat(out)["atlas_A424_radius2_count_connectivity"], counts)
    assert json.loads(out.with_name(out.name + ".json").read_text())["CopiedFrom"] == str(mine)
    with pytest.raises(InputError, match="0 connectivity files of subject 02 hold atlas A424"):
        collect_connectome(root, "02", "A424", tmp_path / "x.mat")
    session = mine.parents[1] / "ses-2" / "dwi" / "sub-01_ses-2_space-ACPC_connectivity.mat"
    session.parent.mkdir(parents=True)
    savemat(session, {"atlas_A424_radius2_count_connectivity": counts})
    with pytest.raises(InputError, match="2 connectivity files .* --session-id"):
        collect_connectome(root, "01", "A424", tmp_path / "y.mat")


# --------------------------------------------------------------------------- the DAG


def add_dwi(bids: Path, subjects, n_volumes: int = 3) -> None:
    """A small DWI series (and its .bval/.bvec) per subject: what QSIPrep's inputs look like."""
    for label in subjects:
        dwi = bids / f"sub-{label}" / "dwi"
        dwi.mkdir(parents=True, exist_ok=True)
        data = np.ones((4, 4, 4, n_volumes), dtype=np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), dwi / f"sub-{label}_dwi.nii.gz")
        (dwi / f"sub-{label}_dwi.bval").write_text("0 1000 1000\n")
        (dwi / f"sub-{label}_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    from fmriflow.sc.demo import write_demo_connectomes
    from test_workflow import make_demo

    demo = make_demo(tmp_path_factory.mktemp("qsi") / "demo", atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=31)
    write_demo_connectomes(demo / "derivatives" / "qsirecon", demo / "ground_truth" / "ground_truth.json", seed=31)
    add_dwi(demo / "bids", ["01", "02"])
    return demo


def _config(demo: Path, results: Path, tmp: Path, **qsi) -> dict:
    from test_workflow import demo_config

    license_file = tmp / "license.txt"
    license_file.write_text("user@example.org\n12345\n")
    (tmp / "templateflow").mkdir(exist_ok=True)
    sc = {"source": "qsiprep", "measure": "radius2_count", "transform": "log1p"}
    return demo_config(demo, results, brainsymphony={"enabled": True, "sc": sc}, qsiprep={
        "fs_license": str(license_file), "templateflow_home": str(tmp / "templateflow"), "threads": 2,
        "mem_mb": 4000, **qsi})


def _printed(stdout: str, image: str) -> list[list[str]]:
    """The container commands of a dry run's printed shell commands (between mkdir and the log)."""
    lines = [line.removeprefix("Shell command: ") for line in stdout.splitlines()]
    return [shlex.split(line.split(" && ", 1)[1].split(" > ", 1)[0]) for line in lines
            if line.startswith("mkdir -p ") and image in line]


@pytest.mark.integration
def test_dry_run_plans_one_qsiprep_and_one_qsirecon_job_per_subject(demo, tmp_path):
    from test_workflow import planned_jobs, run_snakemake

    results = tmp_path / "results"
    proc = run_snakemake(tmp_path, _config(demo, results, tmp_path), "--dry-run", "--printshellcmds")
    jobs = planned_jobs(proc)
    assert (jobs["qsiprep"], jobs["qsirecon"], jobs["qsirecon_atlas"], jobs["sc_connectome"]) == (2, 2, 1, 2)
    assert jobs["brainsymphony_pretrain"] == 1
    preps = _printed(proc.stdout, "docker://pennlinc/qsiprep:26.0.0")
    recons = _printed(proc.stdout, "docker://pennlinc/qsirecon:26.0.0")  # the pins in containers/qsiprep.yaml
    assert len(preps) == len(recons) == 2
    labels = set()
    for cmd in preps:
        positionals, options = parse_args(cmd[cmd.index("docker://pennlinc/qsiprep:26.0.0") + 1:], QSIPREP)
        assert positionals == ["/data", "/out", "participant"] and options["--output-resolution"] == "2"
        labels.add(options["--participant-label"][0])
        assert binds_of(cmd)["/work"][0] == str(results / "work" / "qsiprep" / f"sub-{options['--participant-label'][0]}")
    for cmd in recons:
        _, options = parse_args(cmd[cmd.index("docker://pennlinc/qsirecon:26.0.0") + 1:], QSIRECON)
        assert options["--recon-spec"] == "mrtrix_multishell_msmt_noACT" and options["--atlases"] == ["A424"]
        assert binds_of(cmd)["/atlases"] == (str(results / "sc" / "qsirecon-atlases"), "ro")
    assert labels == {"01", "02"}


@pytest.mark.integration
def test_plan_time_errors_name_the_key_or_file(demo, tmp_path):
    from test_workflow import run_snakemake

    results = tmp_path / "results"
    config = _config(demo, results, tmp_path, fs_license=None)
    env_license = os.environ.pop("FS_LICENSE", None)
    try:
        proc = run_snakemake(tmp_path, config, "--dry-run")
    finally:
        if env_license is not None:
            os.environ["FS_LICENSE"] = env_license
    assert proc.returncode != 0 and "qsiprep.fs_license" in proc.stdout + proc.stderr
    config = _config(demo, results, tmp_path, qsiprep_image=str(tmp_path / "nowhere.sif"))
    proc = run_snakemake(tmp_path, config, "--dry-run")
    assert proc.returncode != 0 and "qsiprep image not found (qsiprep.qsiprep_image)" in proc.stdout + proc.stderr
    config = _config(demo, results, tmp_path)
    config["brainsymphony"]["sc"]["measure"] = "count"
    proc = run_snakemake(tmp_path, config, "--dry-run")
    assert proc.returncode != 0 and "brainsymphony.sc.measure: must be one of" in proc.stdout + proc.stderr
    moved = tmp_path / "moved_dwi"
    (demo / "bids" / "sub-02" / "dwi").rename(moved)
    try:
        proc = run_snakemake(tmp_path, _config(demo, results, tmp_path), "--dry-run")
    finally:
        moved.rename(demo / "bids" / "sub-02" / "dwi")
    assert proc.returncode != 0
    assert re.search(r"sub-02: subject 02 has no diffusion series", proc.stdout + proc.stderr)


@pytest.mark.integration
def test_stub_runtime_through_the_dag_to_sc_connectome(demo, tmp_path, monkeypatch):
    """Both tools' jobs run the stub apptainer; sc_connectome reads the collected .mat."""
    from test_workflow import run_snakemake

    results = tmp_path / "results"
    images = {tool: tmp_path / f"{tool}-26.0.0.sif" for tool in ("qsiprep", "qsirecon")}
    for image in images.values():
        image.write_bytes(b"stub image")
    config = _config(demo, results, tmp_path, **{f"{t}_image": str(p) for t, p in images.items()})
    monkeypatch.setenv("PATH", f"{STUBS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FMRIFLOW_STUB_SC_SOURCE", str(demo / "derivatives" / "qsirecon"))
    targets = [results / "sc" / "atlas-A424" / "transform-log1p" / f"sub-{s}_atlas-A424_desc-log1pcount_connectome.tsv"
               for s in ("01", "02")]
    proc = run_snakemake(tmp_path, config, *map(str, targets))
    assert proc.returncode == 0, proc.stderr[-5000:]
    for label, target in zip(("01", "02"), targets):
        for tool in ("qsiprep", "qsirecon"):
            work = results / "work" / tool / f"sub-{label}"
            runtime = json.loads((work / "stub_apptainer_call.json").read_text())
            assert runtime["image"] == str(images[tool]) and runtime["cleanenv"]
            assert runtime["container_env"] == {"TEMPLATEFLOW_HOME": "/templateflow"}
            assert {b[1]: b[2] for b in runtime["binds"]}["/data"] == "ro"
            call = json.loads((work / f"stub_{tool}_call.json").read_text())
            assert call["parsed"]["participant_label"] == [label] and call["parsed"]["nprocs"] == 2
            assert call["TEMPLATEFLOW_HOME"] == str(tmp_path / "templateflow")
        # the model's input, recomputed from the demo's tck2connectome CSV: symmetric, log(1 + count), diagonal 0
        csv = next((demo / "derivatives" / "qsirecon" / f"sub-{label}").glob("**/*_connectome.csv"))
        upper = np.triu(np.loadtxt(csv, delimiter=","), 1)
        expected = np.log1p(upper + upper.T)
        got = read_tsv(target).to_numpy()
        assert got.shape == (424, 424) and np.allclose(got, expected, rtol=1e-8, atol=1e-12)  # TSV: 9 digits
        sidecar = json.loads(target.with_suffix(".json").read_text())
        assert sidecar["Connectome"]["key"] == "atlas_A424_radius2_count_connectivity"
    record = read_tsv(results / "sc" / "qsirecon" / "sub-01_desc-qsiprep_files.tsv")
    assert record["path"].tolist() == ["sub-01/dwi/sub-01_space-ACPC_desc-preproc_dwi.nii.gz"]
