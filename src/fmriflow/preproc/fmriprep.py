"""``preproc.mode: fmriprep``: the command that runs fMRIPrep on one subject, and what it writes.

One Snakemake job per subject runs fMRIPrep 25.2 in its container, through Apptainer or
Singularity (a ``.sif`` file or a ``docker://`` URI) or through the ``fmriprep-docker``
wrapper. Everything here is a pure function of the config section, the subject, and the
job's threads and memory, so the command is unit-tested flag by flag and printed by
``snakemake -n -p`` before anything runs.

Container layout (Apptainer/Singularity)::

    <bids_dir>          -> /data          read-only
    <output_dir>        -> /out           fMRIPrep >= 21 writes its derivatives here directly
    <work_dir>/sub-<s>  -> /work          kept: a rerun after a crash or time limit resumes
    <templateflow_home> -> /templateflow  TEMPLATEFLOW_HOME inside (compute nodes are offline)
    <fs_license>        -> /opt/freesurfer/license.txt  read-only

``fmriprep-docker`` maps the BIDS, output and work folders and the licence itself; it
cannot bind another folder, so a TemplateFlow home cannot be given with that runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from ..naming import derivative, subject_of
from .derivatives import PreprocFiles

# The atlas grid; always the first output space because every later step reads it.
DEFAULT_SPACE = "MNI152NLin6Asym:res-2"
RUNTIMES = ("apptainer", "singularity", "docker")

BIDS_MOUNT = "/data"
OUT_MOUNT = "/out"
WORK_MOUNT = "/work"
TEMPLATEFLOW_MOUNT = "/templateflow"
LICENSE_MOUNT = "/opt/freesurfer/license.txt"


def pinned_image(pin_file: str | Path) -> str:
    """The image named in ``containers/fmriprep.yaml`` (e.g. ``nipreps/fmriprep:25.2.2``)."""
    import yaml

    data = yaml.safe_load(Path(pin_file).read_text())
    image = data.get("image") if isinstance(data, dict) else None
    if not image or image.endswith(":latest") or ":" not in image:
        raise InputError(pin_file, f"'image' must name an exact tag, got {image!r}")
    return image


def default_image(runtime: str, pinned: str) -> str:
    """Apptainer/Singularity pull the pinned Docker image by URI; Docker uses its name."""
    return pinned if runtime == "docker" else f"docker://{pinned}"


def output_spaces(section: Mapping[str, Any]) -> list[str]:
    """``MNI152NLin6Asym:res-2`` first, then the configured extras (without repeats)."""
    spaces = [DEFAULT_SPACE]
    for space in section.get("output_spaces") or []:
        if space not in spaces:
            spaces.append(space)
    return spaces


def omp_threads(section: Mapping[str, Any], threads: int) -> int:
    """Threads per process: the configured value, else fMRIPrep's own default rule
    (one less than the total, at most 8), never more than ``threads``."""
    value = section.get("omp_nthreads") or min(8, threads - 1)
    return max(1, min(int(value), threads))


def fs_license(section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """The FreeSurfer licence file: ``fs_license`` in config, else ``$FS_LICENSE``.

    fMRIPrep needs it even with ``--fs-no-reconall`` (it runs FreeSurfer tools on the T1w).
    """
    environ = os.environ if environ is None else environ
    path = section.get("fs_license") or environ.get("FS_LICENSE")
    if not path:
        raise InputError("preproc.fmriprep.fs_license", "fs_license is not set (nor FS_LICENSE): fMRIPrep needs a FreeSurfer "
                                                        "licence file (free from surfer.nmr.mgh.harvard.edu/registration.html)")
    if not Path(path).is_file():
        raise InputError(path, "FreeSurfer licence file not found (preproc.fmriprep.fs_license)")
    return Path(path)


def templateflow_home(section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path | None:
    """``templateflow_home`` in config, else ``$TEMPLATEFLOW_HOME`` (Apptainer/Singularity only), else none."""
    environ = os.environ if environ is None else environ
    path = section.get("templateflow_home")
    if not path and section["runtime"] != "docker":
        path = environ.get("TEMPLATEFLOW_HOME")
    return Path(path) if path else None


def fmriprep_command(section: Mapping[str, Any], subject: str, *, threads: int, mem_mb: int, bids_dir: str | Path,
                     output_dir: str | Path, work_dir: str | Path, image: str,
                     environ: Mapping[str, str] | None = None) -> list[str]:
    """The argument list that runs fMRIPrep on ``subject`` (a label without ``sub-``).

    Parameters
    ----------
    section : mapping
        The ``preproc.fmriprep`` config section (runtime, executable, fs_license,
        templateflow_home, output_spaces, omp_nthreads, fs_no_reconall, extra_args).
    threads, mem_mb : int
        The job's threads and memory: ``--nthreads``, ``--omp-nthreads``, ``--mem-mb``.
    bids_dir, output_dir : path
        Raw BIDS dataset and fMRIPrep's output root (host paths).
    work_dir : path
        This subject's own work folder (host path); kept between runs.
    image : str
        Image file or URI (Apptainer/Singularity), or image name (Docker).
    """
    runtime = section["runtime"]
    if runtime not in RUNTIMES:
        raise ValueError(f"'runtime' must be one of {RUNTIMES}; {runtime!r} was provided")
    bids_dir, output_dir, work_dir = (Path(p).absolute() for p in (bids_dir, output_dir, work_dir))
    for inner, name in ((output_dir, "output"), (work_dir, "work")):
        if inner == bids_dir or bids_dir in inner.parents:
            raise InputError(inner, f"fMRIPrep's {name} folder must not lie inside the BIDS dataset {bids_dir}")
    license_file = fs_license(section, environ).absolute()
    tf_home = templateflow_home(section, environ)
    options = [
        "--participant-label", subject,
        "--output-spaces", *output_spaces(section),
        "--nthreads", str(threads),
        "--omp-nthreads", str(omp_threads(section, threads)),
        # fMRIPrep accepts --mem, --mem_mb and --mem-mb; fmriprep-docker only recognises
        # --mem_mb (otherwise it asks on the terminal whether to continue on small machines)
        "--mem_mb" if runtime == "docker" else "--mem-mb", str(int(mem_mb)),
        "--skip-bids-validation",  # the bids rule ran the validator
        "--notrack",
    ]
    if section.get("fs_no_reconall", True):
        options.append("--fs-no-reconall")

    if runtime == "docker":
        if tf_home:
            raise InputError(tf_home, "fmriprep-docker cannot bind a TemplateFlow folder; unset "
                                      "preproc.fmriprep.templateflow_home or use Apptainer/Singularity")
        executable = section.get("executable") or "fmriprep-docker"
        return [executable, str(bids_dir), str(output_dir), "participant", *options,
                "-w", str(work_dir), "--fs-license-file", str(license_file), "-i", image, "--no-tty",
                *map(str, section.get("extra_args") or [])]

    executable = section.get("executable") or runtime
    binds = [f"{bids_dir}:{BIDS_MOUNT}:ro", f"{output_dir}:{OUT_MOUNT}", f"{work_dir}:{WORK_MOUNT}",
             f"{license_file}:{LICENSE_MOUNT}:ro"]
    env = []
    if tf_home:
        binds.append(f"{tf_home.absolute()}:{TEMPLATEFLOW_MOUNT}")
        # --cleanenv drops the host environment; <RUNTIME>ENV_ variables still reach the container
        env = ["env", f"{runtime.upper()}ENV_TEMPLATEFLOW_HOME={TEMPLATEFLOW_MOUNT}"]
    bind_args = [arg for bind in binds for arg in ("-B", bind)]
    return [*env, executable, "run", "--cleanenv", *bind_args, image, BIDS_MOUNT, OUT_MOUNT, "participant", *options,
            "-w", WORK_MOUNT, "--fs-license-file", LICENSE_MOUNT, *map(str, section.get("extra_args") or [])]


def expected_files(output_dir: str | Path, run: str) -> PreprocFiles:
    """The files fMRIPrep 25.2 writes for ``run`` in the atlas space (BIDS layout, ``res-2``)."""
    if "_echo-" in Path(run).name:
        raise InputError(run, "multi-echo runs are not supported in fmriprep mode (fMRIPrep combines the echoes)")
    root = Path(output_dir)
    space, res = DEFAULT_SPACE.split(":res-")
    return PreprocFiles(
        bold=root / derivative(run, space=space, res=res, desc="preproc", suffix="bold", extension=".nii.gz"),
        mask=root / derivative(run, space=space, res=res, desc="brain", suffix="mask", extension=".nii.gz"),
        confounds=root / derivative(run, desc="confounds", suffix="timeseries", extension=".tsv"),
    )


def subject_outputs(output_dir: str | Path, runs) -> dict[str, list[str]]:
    """Per subject: every file its fMRIPrep job must leave (what later steps read, plus the report)."""
    outputs: dict[str, list[str]] = {}
    for run in runs:
        files = expected_files(output_dir, run)
        sidecar = files.confounds.with_suffix(".json")  # aCompCor masks for the denoise step
        outputs.setdefault(subject_of(run), []).extend(str(p) for p in (files.bold, files.mask, files.confounds, sidecar))
    for subject in outputs:
        outputs[subject].append(str(Path(output_dir) / f"sub-{subject}.html"))
    return outputs
