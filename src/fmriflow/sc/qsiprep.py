"""``brainsymphony.sc.source: qsiprep``: the commands that run QSIPrep and QSIRecon on one subject.

Structural connectomes from raw diffusion MRI, one Snakemake job per subject and tool, each in
its pinned container (``containers/qsiprep.yaml``), through Apptainer/Singularity (a ``.sif``
or a ``docker://`` URI) or ``docker run``. As for fMRIPrep (``fmriflow.preproc.fmriprep``),
everything here is a pure function of the config section, the subject and the job's threads and
memory, so the commands are unit-tested flag by flag and printed by ``snakemake -n -p``.

Options were checked against the 26.0.0 releases' documentation of their command lines:
QSIPrep's "Usage" page (https://qsiprep.readthedocs.io/en/latest/usage.html, generated from
``qsiprep/cli/parser.py``) and QSIRecon's "Quickstart" page
(https://qsirecon.readthedocs.io/en/latest/quickstart.html, from ``qsirecon/cli/parser.py``), and
QSIRecon's "Using custom atlases" and "Connectivity matrices"
(https://qsirecon.readthedocs.io/en/latest/builtin_workflows.html). Facts relied on:

- both take ``--participant-label``, ``--nthreads``, ``--omp-nthreads``, ``--mem-mb`` (megabytes),
  ``-w``, ``--fs-license-file``, ``--notrack``; QSIPrep also ``--skip-bids-validation`` and
  requires ``--output-resolution`` (mm); QSIRecon has no validation switch and requires
  ``--recon-spec`` (a built-in name or a YAML file);
- QSIRecon finds a custom atlas with ``--atlases NAME`` in a dataset given as
  ``--datasets LABEL=PATH``; the atlas must be in MNI152NLin2009cAsym (QSIPrep's only template);
- the MRtrix3 specs write ``<source entities>_connectivity.mat`` below
  ``derivatives/qsirecon-<suffix>/sub-<label>/`` with ``atlas_<atlas>_<measure>_connectivity``
  per measure, read by ``fmriflow.sc.connectome``.

Container layout (Apptainer/Singularity binds, ``docker run -v`` alike)::

    QSIPrep:   <bids_dir> -> /data (ro)        <qsiprep dir> -> /out
    QSIRecon:  <qsiprep dir> -> /data (ro)     <qsirecon dir> -> /out
               <atlas dataset> -> /atlases (ro)   <recon spec file> -> /recon_spec.yaml (ro)
    both:      <work_dir>/sub-<s> -> /work (kept: a rerun resumes)
               <templateflow_home> -> /templateflow   <fs_license> -> /opt/freesurfer/license.txt (ro)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError
from ..preproc.fmriprep import omp_threads

RUNTIMES = ("apptainer", "singularity", "docker")
TOOLS = ("qsiprep", "qsirecon")
ATLAS_TEMPLATE = "MNI152NLin2009cAsym"  # QSIPrep 26's --anatomical-template accepts only this one
ATLAS_DATASET = "fmriflowatlases"  # the --datasets label of the atlas dataset the workflow writes

# QSIRecon 26.0.0's built-in MRtrix3 specs (qsirecon/data/pipelines) and the tck2connectome
# measures each of them writes (the same four in all of them).
MRTRIX_SPECS = ("mrtrix_multishell_msmt_ACT-hsvs", "mrtrix_multishell_msmt_ACT-fast", "mrtrix_multishell_msmt_noACT",
                "mrtrix_singleshell_ss3t_ACT-hsvs", "mrtrix_singleshell_ss3t_ACT-fast", "mrtrix_singleshell_ss3t_noACT")
MRTRIX_MEASURES = ("radius2_count", "sift_radius2_count", "sift_invnodevol_radius2_count", "radius2_meanlength")

DATA_MOUNT = "/data"
OUT_MOUNT = "/out"
WORK_MOUNT = "/work"
ATLAS_MOUNT = "/atlases"
SPEC_MOUNT = "/recon_spec.yaml"
TEMPLATEFLOW_MOUNT = "/templateflow"
LICENSE_MOUNT = "/opt/freesurfer/license.txt"


def pinned_images(pin_file: str | Path) -> dict[str, str]:
    """``qsiprep`` and ``qsirecon`` images named in ``containers/qsiprep.yaml``: an exact tag or a digest."""
    import yaml

    data = yaml.safe_load(Path(pin_file).read_text())
    images = {}
    for tool in TOOLS:
        image = data.get(tool) if isinstance(data, dict) else None
        if not image or image.endswith((":latest", ":unstable")) or (":" not in image and "@sha256:" not in image):
            raise InputError(pin_file, f"'{tool}' must name an exact tag or digest, got {image!r}")
        images[tool] = image
    return images


def image_for(section: Mapping[str, Any], tool: str, pinned: Mapping[str, str]) -> str:
    """The configured ``<tool>_image``, else the pin (a ``docker://`` URI for Apptainer/Singularity).

    A local image file that is not there is refused now, naming the key, not when the job starts.
    """
    image = section.get(f"{tool}_image")
    if image:
        local = section["runtime"] != "docker" and "://" not in image
        if local and not Path(image).is_file():
            raise InputError(image, f"{tool} image not found (qsiprep.{tool}_image): give a .sif file, a "
                                    f"docker:// URI, or null for the pin in containers/qsiprep.yaml")
        return image
    return pinned[tool] if section["runtime"] == "docker" else f"docker://{pinned[tool]}"


def fs_license(section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """The FreeSurfer licence: ``qsiprep.fs_license``, else ``$FS_LICENSE`` (both tools refuse to start without)."""
    environ = os.environ if environ is None else environ
    path = section.get("fs_license") or environ.get("FS_LICENSE")
    if not path:
        raise InputError("qsiprep.fs_license", "fs_license is not set (nor FS_LICENSE): QSIPrep and QSIRecon need a "
                                              "FreeSurfer licence file (free from "
                                              "surfer.nmr.mgh.harvard.edu/registration.html)")
    if not Path(path).is_file():
        raise InputError(path, "FreeSurfer licence file not found (qsiprep.fs_license)")
    return Path(path)


def templateflow_home(section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path | None:
    """``qsiprep.templateflow_home``, else ``$TEMPLATEFLOW_HOME``, else none (compute nodes are often offline)."""
    environ = os.environ if environ is None else environ
    path = section.get("templateflow_home") or environ.get("TEMPLATEFLOW_HOME")
    return Path(path) if path else None


def recon_measures(spec: str) -> tuple[str, ...]:
    """The tck2connectome measures a recon spec writes: a built-in MRtrix3 spec, or a YAML file's
    ``connectivity`` nodes; an error naming ``qsiprep.recon_spec`` for anything else."""
    if spec in MRTRIX_SPECS:
        return MRTRIX_MEASURES
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise InputError("qsiprep.recon_spec", f"must be one of QSIRecon's MRtrix3 specs {MRTRIX_SPECS} or a YAML "
                                               f"file with a connectivity node; {spec!r} was provided")
    if not path.is_file():
        raise InputError(path, "recon spec file not found (qsiprep.recon_spec)")
    import yaml

    nodes = (yaml.safe_load(path.read_text()) or {}).get("nodes") or []
    measures = tuple(entry["measure"] for node in nodes if node.get("action") == "connectivity"
                     for entry in (node.get("parameters") or {}).get("tck2connectome") or [] if "measure" in entry)
    if not measures:
        raise InputError(path, "the recon spec has no connectivity node with tck2connectome measures "
                               "(qsiprep.recon_spec): QSIRecon would write no connectome")
    return measures


def check_measure(spec: str, measure: str) -> None:
    """``brainsymphony.sc.measure`` must be one the spec writes: it picks the matrix in the .mat."""
    measures = recon_measures(spec)
    if measure not in measures:
        raise InputError("brainsymphony.sc.measure", f"must be one of the measures recon spec {spec!r} writes "
                                                     f"{measures}; {measure!r} was provided")


def subject_dwi(bids_dir: str | Path, subject: str) -> list[Path]:
    """The subject's raw DWI series (each with its .bval and .bvec), or an error naming the folder."""
    root = Path(bids_dir) / f"sub-{subject}"
    series = sorted(p for p in root.glob("**/dwi/*_dwi.nii*") if p.name.endswith((".nii", ".nii.gz")))
    if not series:
        raise InputError(root, f"subject {subject} has no diffusion series (dwi/*_dwi.nii[.gz]): QSIPrep needs one; "
                               "use brainsymphony.modalities: fmri for a cohort without diffusion data")
    for nifti in series:
        stem = str(nifti).split("_dwi.nii")[0]
        missing = [ext for ext in (".bval", ".bvec") if not Path(f"{stem}_dwi{ext}").is_file()]
        if missing:
            raise InputError(nifti, f"diffusion series without its {' and '.join(missing)} file")
    return series


def _container(section: Mapping[str, Any], image: str, binds: Sequence[tuple[Path, str, str]],
               args: Sequence[str], tf_home: Path | None) -> list[str]:
    """``args`` run in ``image`` with ``binds`` (host, container path, mode) and TemplateFlow's home."""
    runtime = section["runtime"]
    if runtime not in RUNTIMES:
        raise ValueError(f"'runtime' must be one of {RUNTIMES}; {runtime!r} was provided")
    binds = [*binds, *([(tf_home.absolute(), TEMPLATEFLOW_MOUNT, "rw")] if tf_home else [])]
    spec = [f"{host}:{inside}" + (":ro" if mode == "ro" else "") for host, inside, mode in binds]
    executable = section.get("executable") or runtime
    if runtime == "docker":
        env = ["-e", f"TEMPLATEFLOW_HOME={TEMPLATEFLOW_MOUNT}"] if tf_home else []
        # files written as the user who runs the workflow, not root
        user = ["--user", f"{os.getuid()}:{os.getgid()}"] if hasattr(os, "getuid") else []
        return [executable, "run", "--rm", *user, *env, *[a for s in spec for a in ("-v", s)], image, *args]
    # --containall --writable-tmpfs as both tools' installation pages run them; --containall cleans the
    # environment, which <RUNTIME>ENV_ variables still cross
    env = ["env", f"{runtime.upper()}ENV_TEMPLATEFLOW_HOME={TEMPLATEFLOW_MOUNT}"] if tf_home else []
    return [*env, executable, "run", "--containall", "--writable-tmpfs", *[a for s in spec for a in ("-B", s)],
            image, *args]


def _performance(section: Mapping[str, Any], threads: int, mem_mb: int) -> list[str]:
    return ["--nthreads", str(threads), "--omp-nthreads", str(omp_threads(section, threads)),
            "--mem-mb", str(int(mem_mb))]


def _outside(folder: Path, inputs: Path, name: str) -> None:
    if folder == inputs or inputs in folder.parents:
        raise InputError(folder, f"the {name} folder must not lie inside the input dataset {inputs}")


def qsiprep_command(section: Mapping[str, Any], subject: str, *, threads: int, mem_mb: int, bids_dir: str | Path,
                    output_dir: str | Path, work_dir: str | Path, image: str,
                    environ: Mapping[str, str] | None = None) -> list[str]:
    """The argument list that runs QSIPrep on ``subject`` (a label without ``sub-``).

    ``section`` is the ``qsiprep`` config section; ``output_dir`` QSIPrep's derivatives root and
    ``work_dir`` this subject's own work folder (host paths); ``image`` as ``image_for`` gives it.
    """
    bids_dir, output_dir, work_dir = (Path(p).absolute() for p in (bids_dir, output_dir, work_dir))
    for folder, name in ((output_dir, "output"), (work_dir, "work")):
        _outside(folder, bids_dir, name)
    license_file = fs_license(section, environ).absolute()
    options = [
        "--participant-label", subject,
        "--output-resolution", f"{float(section['output_resolution']):g}",
        *_performance(section, threads, mem_mb),
        "--skip-bids-validation",  # the bids rule runs the validator
        "--notrack",
        "-w", WORK_MOUNT, "--fs-license-file", LICENSE_MOUNT,
        *map(str, section.get("qsiprep_args") or []),
    ]
    binds = [(bids_dir, DATA_MOUNT, "ro"), (output_dir, OUT_MOUNT, "rw"), (work_dir, WORK_MOUNT, "rw"),
             (license_file, LICENSE_MOUNT, "ro")]
    return _container(section, image, binds, [DATA_MOUNT, OUT_MOUNT, "participant", *options],
                      templateflow_home(section, environ))


def qsirecon_command(section: Mapping[str, Any], subject: str, *, threads: int, mem_mb: int,
                     qsiprep_dir: str | Path, output_dir: str | Path, work_dir: str | Path, atlas_dataset: str | Path,
                     atlas: str, image: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The argument list that runs QSIRecon's ``recon_spec`` on ``subject``'s QSIPrep outputs, with
    ``atlas`` (a name in the BIDS atlas dataset ``atlas_dataset``, as ``qsirecon_atlas`` writes it)."""
    qsiprep_dir, output_dir, work_dir, atlas_dataset = (
        Path(p).absolute() for p in (qsiprep_dir, output_dir, work_dir, atlas_dataset))
    for folder, name in ((output_dir, "output"), (work_dir, "work")):
        _outside(folder, qsiprep_dir, name)
    recon_measures(section["recon_spec"])  # a built-in MRtrix3 spec or a file with a connectivity node
    license_file = fs_license(section, environ).absolute()
    binds = [(qsiprep_dir, DATA_MOUNT, "ro"), (output_dir, OUT_MOUNT, "rw"), (work_dir, WORK_MOUNT, "rw"),
             (license_file, LICENSE_MOUNT, "ro"), (atlas_dataset, ATLAS_MOUNT, "ro")]
    spec = section["recon_spec"]
    if spec not in MRTRIX_SPECS:
        binds.append((Path(spec).absolute(), SPEC_MOUNT, "ro"))
        spec = SPEC_MOUNT
    options = [
        "--participant-label", subject,
        "--recon-spec", spec,
        "--atlases", atlas,
        "--datasets", f"{ATLAS_DATASET}={ATLAS_MOUNT}",
        *_performance(section, threads, mem_mb),
        "--notrack",
        "-w", WORK_MOUNT, "--fs-license-file", LICENSE_MOUNT,
        *map(str, section.get("qsirecon_args") or []),
    ]
    return _container(section, image, binds, [DATA_MOUNT, OUT_MOUNT, "participant", *options],
                      templateflow_home(section, environ))
