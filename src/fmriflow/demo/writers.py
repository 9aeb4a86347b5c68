"""The demo's files: NIfTI, raw BIDS, fMRIPrep-shaped derivatives and the ground truth.

Holds the writers of one subject's files (preprocessed BOLD, brain mask, confounds, raw
BOLD, optionally of a moving head with non-steady-state volumes, T1w, true region
series), of the dataset-level files (BIDS and derivative descriptions, participants,
``ground_truth/``), the streaming ``.nii.gz`` writer, and the final move of the staged
dataset into place. The layout is in the ``fmriflow.demo`` docstring.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import pandas as pd

from .. import CODE_URL, __version__
from ..atlas import A424_FILES
from ..confounds import MOTION_COLUMNS
from ..io import atomic_path, save_nifti, write_json, write_text, write_tsv
from ..naming import TEMPLATE_RES, TEMPLATE_SPACE, derivative
from ..provenance import BIDS_VERSION
from .model import MODEL, RAW_RES

GENERATOR_NAME = "fmriflow demo-data"
TASK = "rest"
_MNI_CODE = 4  # NIfTI xform code "mni"
_SCANNER_CODE = 1  # NIfTI xform code "scanner" (raw, native data)
HED_VERSION = "8.3.0"  # the HED schema any annotation would use; the demo has none yet

# What the BIDS validator recommends for every MRI sidecar and the demo can state truthfully:
# the software that made the data, and for scanner, site and coil fields that there were none.
# Acquisition parameters the simulation does not model (field strength, echo time, flip angle,
# phase encoding, ...) have no truthful value and are left out: see VALIDATOR_WARNINGS_EXPECTED.
_NONE = "none: synthetic data from fmriflow demo-data, no scanner"
MRI_SIDECAR = {
    "Manufacturer": _NONE,
    "ManufacturersModelName": _NONE,
    "DeviceSerialNumber": _NONE,
    "StationName": _NONE,
    "SoftwareVersions": f"fmriflow {__version__} (demo-data)",
    "InstitutionName": _NONE,
    "InstitutionAddress": _NONE,
    "InstitutionalDepartmentName": _NONE,
    "ReceiveCoilName": _NONE,
    "ReceiveCoilActiveElements": _NONE,
    "CoilCombinationMethod": _NONE,
    "MatrixCoilMode": _NONE,
    "PulseSequenceType": _NONE,
    "PulseSequenceDetails": _NONE,
    "SequenceName": _NONE,
    "NonlinearGradientCorrection": False,
}
BOLD_SIDECAR = {
    "TaskDescription": "Simulated rest: no task. Region signals follow a VAR(1) model whose covariance differs "
                       "between responders and non-responders (fmriflow.demo; truth in ../ground_truth).",
    "Instructions": "none: synthetic data, no participant was instructed",
}
# The warnings a generated demo still gets, by validator code and field, and why they stay.
VALIDATOR_WARNINGS_EXPECTED = {
    ("SIDECAR_KEY_RECOMMENDED", key): "an acquisition parameter the simulation does not model: no truthful value"
    for key in ("MagneticFieldStrength", "EchoTime", "FlipAngle", "MRAcquisitionType", "ScanningSequence",
                "SequenceVariant", "DwellTime", "PhaseEncodingDirection", "TotalReadoutTime")
} | {
    ("SIDECAR_KEY_RECOMMENDED", key): "a Cognitive Atlas / CogPO identifier names what a participant did; "
                                      "no participant did anything, and no identifier could be checked offline"
    for key in ("CogAtlasID", "CogPOID")
}


# --------------------------------------------------------------------------- one subject


def _write_subject_files(rng, spec, shared, *, bold, vox, mask3d, confounds, confounds_meta, x, subject_scale, motion):
    """Write one subject's files; return its ground-truth entries for the raw-BOLD options (if any)."""
    label = spec["label"]
    root = Path(shared["root"])
    sub = f"sub-{label}"
    n_trs, tr = shared["n_trs"], shared["tr"]
    shape, grid_affine = mask3d.shape, shared["grid_affine"]

    # fMRIPrep-shaped derivatives; the res entity only on the atlas grid (2 mm)
    deriv = root / "derivatives" / "fmriprep"
    run = f"{sub}/func/{sub}_task-{TASK}"
    ents = {"space": TEMPLATE_SPACE, "res": TEMPLATE_RES if shared["bold_res"] == 2 else None}
    zooms = tuple(float(abs(grid_affine[a, a])) for a in range(3))
    preproc = deriv / derivative(run, suffix="bold", extension=".nii.gz", desc="preproc", **ents)
    header = _header((*shape, n_trs), grid_affine, np.float32, (*zooms, tr), _MNI_CODE)
    _save_volumes(preproc, header, _scatter_volumes(bold, vox, mask3d.size, np.float32))
    write_json(_json_of(preproc), {
        "RepetitionTime": tr,
        "SkullStripped": False,
        "TaskName": TASK,
        "Description": f"Synthetic preprocessed BOLD written by {GENERATOR_NAME} (not by fMRIPrep).",
    })
    mask = deriv / derivative(run, suffix="mask", extension=".nii.gz", desc="brain", **ents)
    header = _header(shape, grid_affine, np.uint8, zooms, _MNI_CODE)
    save_nifti(nib.Nifti1Image(mask3d.astype(np.uint8), grid_affine, header), mask)
    write_json(_json_of(mask), {"Type": "Brain"})
    conf = deriv / f"{run}_desc-confounds_timeseries.tsv"
    write_tsv(conf, confounds)
    write_json(conf.with_suffix(".json"), confounds_meta)

    # raw BIDS: the same volumes on the 4 mm grid, int16 (see the fmriflow.demo docstring)
    raw = root / "bids" / sub
    raw_shape = shared["raw_shape"]
    raw_bold = raw / "func" / f"{sub}_task-{TASK}_bold.nii.gz"
    raw_truth: dict = {}
    if shared["head_motion"] is None:
        position = np.full(mask3d.size, -1, np.int64)
        position[vox] = np.arange(len(vox))
        source = position[shared["raw_source"]]
        keep = np.flatnonzero(source >= 0)
        values = np.clip(np.rint(bold[:, source[keep]]), 0, np.iinfo(np.int16).max).astype(np.int16)
        volumes = _scatter_volumes(values, keep, int(np.prod(raw_shape)), np.int16)
    else:
        volumes, raw_truth = _moving_head_volumes(spec, shared, bold, vox, mask3d, motion)
    n_dummy = shared["dummy_volumes"]
    if n_dummy:
        volumes = _with_dummy_volumes(volumes, n_dummy)
        raw_truth["dummy_volumes"] = n_dummy
    header = _header((*raw_shape, n_trs + n_dummy), shared["raw_affine"], np.int16, (float(RAW_RES),) * 3 + (tr,), _SCANNER_CODE)
    _save_volumes(raw_bold, header, volumes)
    if "motion" in raw_truth:  # one row per raw volume: the dummies are copies of the first
        applied = raw_truth.pop("motion")
        params = np.vstack([np.repeat(applied[:1], n_dummy, axis=0), applied])
        write_tsv(root / "ground_truth" / f"{sub}_desc-headmotion_timeseries.tsv", pd.DataFrame(params, columns=list(MOTION_COLUMNS)))
    write_json(_json_of(raw_bold), {"RepetitionTime": tr, "TaskName": TASK})
    template = shared["template"]
    head = template > 0
    t1w = np.zeros(template.shape, np.float32)
    t1w[head] = template[head] * 1000 * subject_scale + rng.normal(0, 10, int(head.sum()))
    t1w = np.clip(np.rint(t1w), 0, np.iinfo(np.int16).max).astype(np.int16)
    header = _header(template.shape, shared["template_affine"], np.int16, (2.0, 2.0, 2.0), _SCANNER_CODE)
    save_nifti(nib.Nifti1Image(t1w, shared["template_affine"], header), raw / "anat" / f"{sub}_T1w.nii.gz")

    write_tsv(root / "ground_truth" / f"{sub}_desc-true_timeseries.tsv", pd.DataFrame(x, columns=shared["region_names"]))
    return raw_truth


def _moving_head_volumes(spec, shared, bold, vox, mask3d, motion):
    """Raw volumes (int16, Fortran-flat) of the head in its pose, moving; and the truth to record."""
    from scipy.ndimage import map_coordinates

    from ..confounds import rigid_matrix

    seq = spec["seed_seq"]
    # a stream of its own, so that the subject's other draws (and files) do not change
    pose_rng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, 1 << 20)))
    pose_params = np.r_[pose_rng.normal(0.0, 4.0, 3), pose_rng.normal(0.0, np.deg2rad(3.0), 3)]
    raw_shape, raw_affine, grid_affine = shared["raw_shape"], shared["raw_affine"], shared["grid_affine"]
    center = raw_affine[:3, :3] @ ((np.array(raw_shape) - 1) / 2.0) + raw_affine[:3, 3]
    pose = rigid_matrix(pose_params, center)
    applied = motion * shared["head_motion"]
    raw_xyz = nib.affines.apply_affine(raw_affine, np.indices(raw_shape).reshape(3, -1).T)
    grid_inv = np.linalg.inv(grid_affine)
    shape = mask3d.shape

    def volumes():
        buf = np.zeros(mask3d.size, np.float32)
        for t in range(len(bold)):
            buf[vox] = bold[t]
            head = rigid_matrix(applied[t], center) @ pose
            coords = nib.affines.apply_affine(grid_inv @ np.linalg.inv(head), raw_xyz).T
            sampled = map_coordinates(buf.reshape(shape, order="F"), coords, order=1, cval=0.0)
            # raw_xyz runs in C order over the raw grid; the file wants Fortran order
            values = sampled.reshape(raw_shape).ravel(order="F")
            yield np.clip(np.rint(values), 0, np.iinfo(np.int16).max).astype(np.int16)

    truth = {
        "head_pose": {"translation_mm": pose_params[:3].round(6).tolist(), "rotation_rad": pose_params[3:].round(8).tolist(),
                      "center_mm": center.tolist(),
                      "convention": "fmriflow.confounds.rigid_matrix: x -> R (x - c) + c + t, R = Rz Ry Rx; "
                                    "tissue at template point p is seen at M_t P p"},
        "head_motion_scale": shared["head_motion"],
        "motion": applied,
    }
    return volumes(), truth


_DUMMY_BOOST, _DUMMY_DECAY = 0.4, 0.5  # non-steady-state volume k: first volume times 1 + 0.4 * 0.5**k


def _with_dummy_volumes(volumes, n_dummy):
    volumes = iter(volumes)
    first = next(volumes).copy()
    for k in range(n_dummy):
        boosted = np.rint(first.astype(np.float64) * (1 + _DUMMY_BOOST * _DUMMY_DECAY**k))
        yield np.clip(boosted, 0, np.iinfo(np.int16).max).astype(np.int16)
    yield first
    yield from volumes


def _json_of(nifti: Path) -> Path:
    return nifti.with_name(nifti.name.removesuffix(".nii.gz") + ".json")


# --------------------------------------------------------------------------- NIfTI


def _header(shape, affine, dtype, zooms, code) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_qform(affine, code=code)
    hdr.set_sform(affine, code=code)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec" if len(shape) == 4 else "unknown")
    return hdr


def _scatter_volumes(values: np.ndarray, index: np.ndarray, size: int, dtype) -> Iterable[np.ndarray]:
    """Full volumes (Fortran-ordered flat) with ``values[t]`` at ``index``, one at a time."""
    buf = np.zeros(size, dtype)
    for row in values:
        buf[index] = row
        yield buf


def _save_volumes(path: Path, header: nib.Nifti1Header, volumes: Iterable[np.ndarray]) -> None:
    """Write a 4D ``.nii.gz`` one volume at a time (no full 4D array in memory).

    The header bytes are nibabel's; the gzip member is written by zlib itself
    (``wbits=31``: mtime 0, no file name, so reruns are byte-identical) with the
    run-length strategy, which compresses the zeros outside the brain as well as the
    default and the noisy in-brain values as well as level 1, about a third faster.
    """
    if not path.name.endswith(".nii.gz"):
        raise ValueError(f"{path}: expected a .nii.gz name")
    header = header.copy()
    head = io.BytesIO()
    header.write_to(head)  # sets vox_offset (352) and writes the empty extension flag
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(compressor.compress(head.getvalue()))
        for vol in volumes:
            fh.write(compressor.compress(memoryview(np.ascontiguousarray(vol)).cast("B")))
        fh.write(compressor.flush())


# --------------------------------------------------------------------------- dataset


def _write_bids_top(bids: Path, participants: pd.DataFrame, n_trs: int, tr: float, raw: dict) -> None:
    bids.mkdir(parents=True, exist_ok=True)
    write_json(bids / "dataset_description.json", {
        "Name": "fmriflow synthetic resting-state demo",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        # the people behind the generator, and the program that wrote the data
        "Authors": ["fmriflow contributors", f"{GENERATOR_NAME} (synthetic data, no participants)"],
        "HEDVersion": HED_VERSION,
        "SourceDatasets": [
            *({"URL": f.url} for f in A424_FILES.values()),  # the URLs pin a commit
            {"URL": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
             "Version": "ICBM 2009a symmetric T1, 2 mm, as shipped with nilearn (the T1w images)"},
        ],
        "GeneratedBy": [{
            "Name": GENERATOR_NAME,
            "Version": __version__,
            "CodeURL": CODE_URL,
            "Description": "Synthetic data from a documented generative model (fmriflow.demo).",
        }],
    })
    write_text(bids / "README", (
        "fmriflow synthetic resting-state demo\n"
        "=====================================\n\n"
        f"Simulated data written by {GENERATOR_NAME} {__version__} (module fmriflow.demo), "
        "not acquired from people.\n"
        f"{len(participants)} participants, one resting-state run each ({n_trs} volumes, TR {tr:g} s).\n"
        + (f"Each run starts with {raw['dummy_volumes']} more, non-steady-state volumes.\n" if raw["dummy_volumes"] else "")
        + ("The BOLD images show the simulated head in a random pose, moving rigidly (head_motion "
           f"{raw['head_motion']:g}); the\n" if raw["head_motion"] is not None else
           "The BOLD images are the simulated signal on a 4 mm grid aligned with MNI space; the\n")
        +
        "T1w images are the MNI152 template with noise. The generative model, its parameters\n"
        "and the planted connectivity differences between responders and non-responders are\n"
        "in ../ground_truth/ground_truth.json.\n\n"
        "Sidecar fields about a scanner, site or coil say that there was none. Acquisition\n"
        "parameters the simulation does not model (field strength, echo time, flip angle, phase\n"
        "encoding, ...) are left out: the BIDS validator's warnings about them are expected.\n"
    ))
    # inherited by every run's sidecar (BIDS inheritance principle): said once, for all subjects
    write_json(bids / f"task-{TASK}_bold.json", {**MRI_SIDECAR, **BOLD_SIDECAR})
    write_json(bids / "T1w.json", MRI_SIDECAR)
    write_tsv(bids / "participants.tsv", participants)
    write_json(bids / "participants.json", {
        "participant_id": {"Description": "Participant label"},
        "age": {"Description": "Simulated age", "Units": "year"},
        "sex": {"Description": "Simulated sex", "Levels": {"F": "female", "M": "male"}},
        "response": {
            "Description": "Simulated treatment response; responders have the planted connectivity differences",
            "Levels": {"0": "non-responder", "1": "responder"},
        },
        "drug": {"Description": "Simulated treatment arm", "Levels": {"drugA": "drug A", "drugB": "drug B"}},
        "site": {"Description": "Simulated acquisition site", "Levels": {"site1": "site 1", "site2": "site 2"}},
    })


def _write_fmriprep_top(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "dataset_description.json", {
        "Name": "fmriflow synthetic demo: fMRIPrep-shaped derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": GENERATOR_NAME,
            "Version": __version__,
            "CodeURL": CODE_URL,
            "Description": "Synthetic derivatives laid out like fMRIPrep's; fMRIPrep did not produce them.",
        }],
    })


def _write_ground_truth(
    gt: Path, *, labels_table, networks, edges, sigma0, sigma1, participants, results, off_grid, settings
) -> None:
    names = labels_table["name"].to_numpy()
    i = edges["region_i"].to_numpy() - 1
    j = edges["region_j"].to_numpy() - 1
    table = pd.DataFrame({
        "region_i": i + 1,
        "region_j": j + 1,
        "name_i": names[i],
        "name_j": names[j],
        "network_i": networks[i],
        "network_j": networks[j],
        "corr_nonresponder": sigma0[i, j],
        "corr_responder": sigma1[i, j],
        "delta": sigma1[i, j] - sigma0[i, j],
    })
    write_tsv(gt / "edges.tsv", table)
    on_edge = np.isin(np.arange(len(names)), np.concatenate([i, j]))
    in_network = np.isin(networks, MODEL.responder_networks)
    write_tsv(gt / "regions.tsv", pd.DataFrame({
        "index": labels_table["index"].to_numpy(),
        "name": names,
        "network": networks,
        "responder_network": in_network,
        "edge_region": on_edge,
        "planted": in_network | on_edge,  # the regions whose connectivity differs between groups
        "dynamics_network": networks == MODEL.dynamics_network,  # responders' slower dynamics, same FC
    }))
    model = asdict(MODEL)
    model["responder_loading"] = settings.get("responder_loading", MODEL.responder_loading)  # --responder-loading
    model["ar_coef"] = MODEL.ar_coef(settings["tr"])
    model["physio_ar_coef"] = MODEL.physio_ar_coef(settings["tr"])
    model["unique_variance"] = 1 - MODEL.network_loading**2 - MODEL.global_loading**2
    model["within_network_corr"] = MODEL.network_loading**2 + MODEL.global_loading**2
    model["between_network_corr"] = MODEL.global_loading**2
    model["responder_network_corr_increase"] = model["responder_loading"] ** 2
    model["dynamics_ar_coef"] = {group: MODEL.dynamics_ar_coef(settings["tr"], group == "responder")
                                 for group in ("non-responder", "responder")}
    model["dynamics_region_lag1"] = {group: MODEL.region_lag1(settings["tr"], group == "responder")
                                     for group in ("non-responder", "responder")}
    info = {
        "Description": (
            "Ground truth of the fmriflow synthetic demo. Region signals follow a VAR(1) whose "
            "stationary covariance is Sigma0 = B B' + D (non-responders) or Sigma1 (responders): "
            "Sigma0 with a factor of loading 'responder_loading' on the 'responder_networks' and "
            "'edge_delta' added on the listed edges. Responders also have slower dynamics in the "
            "'dynamics_network': its factor's lag-1 autocorrelation is 'dynamics_ar_coef' (per group) "
            "at unchanged zero-lag covariance, which zero-lag FC cannot see; a region of it then has "
            "lag-1 autocorrelation 'dynamics_region_lag1'. See fmriflow.demo's docstring."
        ),
        "GeneratedBy": {"Name": GENERATOR_NAME, "Version": __version__, "CodeURL": CODE_URL},
        "settings": settings,
        "model": model,
        "edges": table[["region_i", "region_j", "name_i", "name_j"]].to_dict(orient="records"),
        "regions": [
            {"index": int(r.index), "name": r.name, "network": int(networks[k]), "x": float(r.x), "y": float(r.y), "z": float(r.z)}
            for k, r in enumerate(labels_table.itertuples())
        ],
        # regions with no voxel on the BOLD grid (1-voxel regions can fall between 3 or
        # 4 mm voxels); a subject's regions_absent also counts them
        "regions_not_on_grid": off_grid,
        "subjects": {
            res["participant_id"]: {**participants.iloc[n].drop("participant_id").to_dict(), **res}
            for n, res in enumerate(results)
        },
        "files": {
            "edges": "edges.tsv",
            "regions": "regions.tsv (network of each region; responder_network, edge_region, planted: "
                       "connectivity differs; dynamics_network: dynamics differ)",
            "true_timeseries": "sub-<label>_desc-true_timeseries.tsv (n_trs rows x 424 regions, column = region name)",
        },
    }
    write_json(gt / "ground_truth.json", info)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
            return
        out_dir.rmdir()
    os.replace(staging, out_dir)
