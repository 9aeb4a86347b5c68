"""Synthetic demo dataset: raw BIDS, fMRIPrep-shaped derivatives and the known truth.

The demo lets the whole workflow run, and be checked, without real data: it writes a
raw BIDS dataset, derivatives shaped like fMRIPrep's (``--output-spaces
MNI152NLin6Asym:res-2``) and the ground truth the analysis should recover, namely
which A424 region pairs (edges) differ in functional connectivity between simulated
responders and non-responders.

Generative model
----------------
Networks
    The 424 A424 regions are split into ``K = 8`` networks by seeded k-means on the
    region centres with ``|x|`` in place of ``x``, so that homologous left/right
    regions share a network, as in resting-state networks.
Population covariance (unit diagonal, so it is also the correlation)
    ``Sigma0 = B B' + D`` with ``B[r, k] = lam`` for the network ``k`` of region ``r``
    (``lam = 0.6``), a global column ``B[r, K] = g`` for every region (``g = 0.25``)
    and ``D = (1 - lam**2 - g**2) I``. Within-network correlation is
    ``lam**2 + g**2 = 0.4225``, between-network ``g**2 = 0.0625``: real resting-state
    FC is positive on average between networks, which the global factor mimics.
Group effect
    Responders differ in two ways, one distributed and one sparse:

    - a responder network factor: ``Sigma1`` adds a factor with loading ``h = 0.5``
      on every region of two networks (0 and 1), so correlations within and between
      those networks rise by ``h**2 = 0.25``. A network-level shift is what a
      ResNet-18 on a 424 x 424 matrix can find from a few dozen subjects; a handful of
      isolated edges is not (a sparse linear model finds those);
    - 16 planted edges: ``+ c (e_i e_j' + e_j e_i')`` on 16 disjoint region pairs
      ``(i, j)`` in different networks, none in the responder networks (``c = 0.3``).

    So the correlation difference is exactly ``h**2`` inside the responder networks,
    ``c`` on the edges and zero elsewhere (``ground_truth/regions.tsv`` marks the
    regions of both). The unique variance is at least ``1 - lam**2 - g**2 - h**2 =
    0.3275 > c`` and the edge perturbation has eigenvalues ``+-c``, so ``Sigma1`` is
    positive definite (also checked numerically). Edge regions have at least 40
    voxels and lie far from the dropout sphere, so every subject observes them.
Region signals
    A stationary VAR(1), ``x_t = phi x_{t-1} + sqrt(1 - phi**2) L eps_t`` with
    ``L = chol(Sigma)``, ``eps_t ~ N(0, I)`` and ``x_0 = L eps_0``, so ``Sigma`` is the
    exact covariance of every ``x_t``; ``phi = 0.6 ** (TR / 2 s)`` gives lag-1
    autocorrelation 0.6 at TR 2 s whatever the TR.
Voxels (percent signal change units, ``%``)
    ``y_v(t) = b_v (1 + 0.01 (a_v x_r(t) + sigma eta_v(t) + sum_k w_vk n_k(t)))``,
    ``a_v = 1`` for voxels of atlas region ``r``, 0 elsewhere; ``sigma = 1.5``;
    ``eta ~ N(0, 1)`` white. ``b_v`` follows the inverted MNI152 T1 intensity
    (``1100 - 500 T1``: CSF bright, white matter dark, as in T2* EPI) times a
    subject scale ``U(0.8, 1.2)`` and 3 % voxel jitter. Values are stored rounded to
    1/16 (quantisation SD 0.018, about 1e-3 of the noise SD; smaller, faster gzip).
Nuisance regressors ``n_k``, all affine in columns of the confounds TSV, so that
regressing those columns removes them exactly
    - motion: 6 rigid-body parameters, random walks (steps 0.03 mm and 0.0006 rad,
      times a subject level ``exp(N(0, 0.4**2))``) smoothed over 1.5 TR; half of the
      subjects get 1-3 one-volume spikes (0.6-1.5 mm, 0.002-0.005 rad). Weights per
      millimetre (radians times 50 mm) ``0.6 % (beta0 + beta . xi_v + 0.5 zeta_v)``
      with ``xi_v`` the scaled voxel position: smooth in space, so region means are
      affected, plus voxel-level scatter.
    - ``csf`` and ``white_matter``: independent AR(1) series (``phi = 0.9`` at TR 2 s,
      unit variance) with compartment weights (CSF 2.0, WM 1.5 on their own series,
      0.3 otherwise, 25 % jitter). Non-atlas in-mask voxels are CSF below the median
      T1 intensity and WM above it. The TSV columns are
      ``mean(b_c) (1 + 0.01 w_c s_c(t))``, the compartment mean of that component.
    - drift: the high-pass cosine columns, weight ``1 % / j`` for the j-th cosine
      (times a smooth spatial pattern).
Brain mask
    nilearn's MNI152 brain mask (offline copy) on the BOLD grid, union the atlas
    labels; half of the subjects lose an orbitofrontal signal-dropout sphere (centre
    ``(0, 36, -22)`` mm jittered by 3 mm, radius ``U(12, 20)`` mm), so some regions
    are partly or wholly missing for them.
Confounds (as fMRIPrep computes them, on the simulated data)
    ``global_signal`` (mask mean), ``framewise_displacement`` (Power: sum of absolute
    translation differences plus 50 mm times sum of absolute rotation differences),
    ``dvars``/``std_dvars`` (nipype's ComputeDVARS; intensity normalised to 1000 at the
    median of the temporal-mean image), DCT-II ``cosineNN`` for a 128 s high-pass,
    ``a_comp_cor_00-04`` (PCA of in-mask non-atlas voxels) and ``t_comp_cor_00-04``
    (PCA of the 2 % highest-variance in-mask voxels) after removing the cosines and
    the mean and scaling each voxel to unit variance, and ``motion_outlier_NN`` for
    volumes with FD > 0.5 mm or std_dvars > 1.5.
Raw BOLD and T1w
    The raw BOLD is the same simulated volumes sampled (nearest voxel) on a 4 mm grid
    over the same field of view (every second voxel of the 2 mm grid), rounded to
    int16: not a simulated acquisition (motion is a regressor, the image does not
    move). The T1w is nilearn's MNI152 template times 1000, plus noise. Both exist
    so that the raw BIDS layer is complete and valid.
Raw BOLD with head motion (option ``head_motion``; off by default)
    For the ``lite`` preprocessing mode, the raw BOLD can instead show what a scanner
    would record of a moving head: each subject's head sits in a fixed pose ``P``
    (rotations ``N(0, 3 deg)`` about each axis, translations ``N(0, 4 mm)``) and moves by
    ``M_t``, the rigid transform of the confounds' six motion parameters times
    ``head_motion``, so the tissue at template point ``p`` is seen at
    ``M_t P p`` and each raw volume samples the simulated volume (trilinear) at
    ``(M_t P)^-1 x``. Rotation convention: ``fmriflow.confounds.rigid_matrix`` about the
    centre of the raw field of view. ``dummy_volumes`` > 0 puts that many
    non-steady-state volumes before them: copies of the first volume brightened by
    ``1 + 0.4 * 0.5**k`` (T1 saturation). Truth: ``ground_truth/sub-XX_desc-headmotion_timeseries.tsv``
    (one row per raw volume) and each subject's ``head_pose`` in ``ground_truth.json``.
    The fMRIPrep-shaped derivatives do not change with either option.
Randomness
    ``numpy.random.SeedSequence(seed)``: child 0 draws the population (networks,
    edges, participants, who has dropout or spikes), child ``s`` subject ``s``; so
    every file is the same for any ``jobs`` and a rerun is byte-identical.

Layout
------
::

    out_dir/
      bids/                      raw BIDS 1.10.0 (validator: 0 errors)
        dataset_description.json, README, participants.tsv/.json
        sub-XX/anat/sub-XX_T1w.nii.gz
        sub-XX/func/sub-XX_task-rest_bold.nii.gz/.json
      derivatives/fmriprep/      fMRIPrep-shaped, GeneratedBy the demo generator
        sub-XX/func/sub-XX_task-rest_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz/.json
        sub-XX/func/sub-XX_task-rest_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz/.json
        sub-XX/func/sub-XX_task-rest_desc-confounds_timeseries.tsv/.json
      ground_truth/
        edges.tsv, ground_truth.json, sub-XX_desc-true_timeseries.tsv

``res-2`` appears only when ``bold_res`` is 2 (the A424 grid itself).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np
import pandas as pd

from . import CODE_URL, __version__
from .atlas import A424_N_REGIONS, a424_labels_table
from .confounds import dct_highpass_basis, expansions, framewise_displacement, one_hot_columns
from .errors import InputError
from .io import atomic_path, save_nifti, sha256sum, write_json, write_text, write_tsv
from .naming import TEMPLATE_RES, TEMPLATE_SPACE, derivative
from .provenance import BIDS_VERSION

GENERATOR_NAME = "fmriflow demo-data"
TASK = "rest"
RAW_RES = 4
BOLD_RESOLUTIONS = (2, 3, 4)
_ATLAS_SHAPE = (91, 109, 91)
_ATLAS_RES = 2.0
_MNI_CODE = 4  # NIfTI xform code "mni"
_SCANNER_CODE = 1  # NIfTI xform code "scanner" (raw, native data)
_TR_CHUNK = 25  # TRs simulated at a time: bounds the temporaries, fixed for determinism
_VOXEL_CHUNK = 32768  # voxels per block in the confound computations
_QUANTUM_INV = 16  # preprocessed BOLD values are multiples of 1/16


@dataclass(frozen=True)
class DemoModel:
    """Every constant of the generative model (see the module docstring)."""

    n_networks: int = 8
    network_loading: float = 0.6
    global_loading: float = 0.25
    n_edges: int = 16
    edge_delta: float = 0.3
    responder_networks: tuple = (0, 1)
    responder_loading: float = 0.5
    edge_min_voxels: int = 40
    edge_min_dropout_distance_mm: float = 45.0
    ar_coef_at_tr2: float = 0.6
    signal_pct: float = 1.0
    noise_pct: float = 1.5
    baseline_intercept: float = 1100.0
    baseline_t1_slope: float = -500.0
    baseline_subject_range: tuple = (0.8, 1.2)
    baseline_voxel_jitter: float = 0.03
    motion_trans_step_mm: float = 0.03
    motion_rot_step_rad: float = 0.0006
    motion_level_log_sd: float = 0.4
    motion_smooth_tr: float = 1.5
    motion_rot_radius_mm: float = 50.0
    motion_pct_per_mm: float = 0.6
    spike_fraction: float = 0.5
    spike_count_range: tuple = (1, 3)
    spike_trans_mm: tuple = (0.6, 1.5)
    spike_rot_rad: tuple = (0.002, 0.005)
    physio_ar_coef_at_tr2: float = 0.9
    csf_weight_own: float = 2.0
    wm_weight_own: float = 1.5
    physio_weight_other: float = 0.3
    physio_weight_jitter: float = 0.25
    drift_pct: float = 1.0
    spatial_scatter: float = 0.5
    dropout_fraction: float = 0.5
    dropout_center_mm: tuple = (0.0, 36.0, -22.0)
    dropout_center_jitter_mm: float = 3.0
    dropout_radius_mm: tuple = (12.0, 20.0)
    high_pass_cutoff_s: float = 128.0
    n_compcor: int = 5
    tcompcor_fraction: float = 0.02
    fd_threshold_mm: float = 0.5
    std_dvars_threshold: float = 1.5
    dvars_intensity_normalization: float = 1000.0
    raw_res_mm: int = RAW_RES

    def ar_coef(self, tr: float) -> float:
        return self.ar_coef_at_tr2 ** (tr / 2.0)

    def physio_ar_coef(self, tr: float) -> float:
        return self.physio_ar_coef_at_tr2 ** (tr / 2.0)


MODEL = DemoModel()

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# --------------------------------------------------------------------------- public API


def generate_demo(
    out_dir: str | Path,
    atlas_img: str | Path,
    coordinates: str | Path,
    *,
    n_subjects: int = 24,
    n_trs: int = 200,
    tr: float = 2.0,
    bold_res: int = 2,
    seed: int = 0,
    jobs: int = 1,
    overwrite: bool = False,
    head_motion: float | None = None,
    dummy_volumes: int = 0,
) -> dict[str, Any]:
    """Write the synthetic demo dataset under ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Destination; holds ``bids/``, ``derivatives/fmriprep/`` and ``ground_truth/``.
        It is built in a hidden sibling folder and renamed into place at the end, so a
        killed run leaves nothing that looks complete.
    atlas_img, coordinates : path
        ``A424+2mm.nii.gz`` and ``A424_Coordinates.dat``.
    n_subjects : int
        Even, at least 2: half responders. Drug is balanced within each response group
        and site overall (exactly when the counts allow, else within one).
    n_trs : int
        Volumes per run, at least 20.
    tr : float
        Repetition time in seconds, in (0, 10].
    bold_res : {2, 3, 4}
        Voxel size (mm) of the preprocessed BOLD. At 2 the images lie on the A424 grid
        and carry ``res-2`` in their names; otherwise the grid covers the same field of
        view at that voxel size and the ``res`` entity is left out.
    seed : int
        Non-negative seed of all randomness.
    jobs : int
        Subjects simulated in parallel processes; results do not depend on it.
    overwrite : bool
        Replace an existing non-empty ``out_dir`` (only after the new one is complete).
    head_motion : float or None
        When set, the raw BOLD shows the head in a random pose, moving rigidly by this
        multiple of the confounds' motion parameters (module docstring); None (default)
        keeps the raw BOLD a motion-free copy of the simulated volumes.
    dummy_volumes : int
        Non-steady-state volumes put before the raw BOLD (default 0).

    Returns
    -------
    dict
        Paths of the three roots, counts and the subject labels.

    Raises
    ------
    ValueError
        For bad arguments.
    FileExistsError
        If ``out_dir`` exists, is not empty and ``overwrite`` is false.
    fmriflow.errors.InputError
        If the atlas files are not the A424 atlas.
    """
    _check_args(n_subjects, n_trs, tr, bold_res, seed, jobs)
    _check_raw_options(head_motion, dummy_volumes)
    raw = {"head_motion": None if head_motion is None else float(head_motion), "dummy_volumes": int(dummy_volumes)}
    with _single_threaded_blas():
        return _generate(Path(out_dir), atlas_img, coordinates, n_subjects, n_trs, float(tr), bold_res, seed, jobs, overwrite, raw)


def _generate(out_dir, atlas_img, coordinates, n_subjects, n_trs, tr, bold_res, seed, jobs, overwrite, raw):
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True to replace it, "
            "or choose another folder"
        )

    labels_table = a424_labels_table(coordinates)
    atlas = nib.load(atlas_img)
    atlas_labels = _load_atlas_labels(atlas, atlas_img)
    grid_shape, grid_affine = bold_grid(atlas.affine, bold_res)
    raw_shape, raw_affine = bold_grid(atlas.affine, RAW_RES)

    seq = np.random.SeedSequence(seed)
    pop_seq, *subject_seqs = seq.spawn(n_subjects + 1)
    pop_rng = np.random.default_rng(pop_seq)

    networks = _assign_networks(labels_table, pop_rng)
    edges = _choose_edges(atlas_labels, atlas.affine, networks, pop_rng)
    sigma0, sigma1 = population_covariances(networks, edges)
    chol = {0: np.linalg.cholesky(sigma0), 1: np.linalg.cholesky(sigma1)}
    participants = _participants(n_subjects, pop_rng)
    n_dropout = int(round(MODEL.dropout_fraction * n_subjects))
    n_spikes = int(round(MODEL.spike_fraction * n_subjects))
    has_dropout = np.zeros(n_subjects, bool)
    has_dropout[pop_rng.permutation(n_subjects)[:n_dropout]] = True
    has_spikes = np.zeros(n_subjects, bool)
    has_spikes[pop_rng.permutation(n_subjects)[:n_spikes]] = True

    shared = _shared_arrays(atlas, atlas_labels, grid_shape, grid_affine, raw_shape, raw_affine)
    shared.update(
        chol=chol, n_trs=n_trs, tr=tr, bold_res=bold_res, region_names=list(labels_table["name"]), **raw
    )
    specs = [
        {
            "label": row.participant_id.removeprefix("sub-"),
            "response": int(row.response),
            "seed_seq": subject_seqs[i],
            "dropout": bool(has_dropout[i]),
            "spikes": bool(has_spikes[i]),
        }
        for i, row in enumerate(participants.itertuples())
    ]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.incomplete-", dir=out_dir.parent))
    try:
        shared["root"] = str(staging)
        _write_bids_top(staging / "bids", participants, n_trs, tr, raw)
        _write_fmriprep_top(staging / "derivatives" / "fmriprep")
        results = _run_subjects(specs, shared, jobs)
        _write_ground_truth(
            staging / "ground_truth",
            labels_table=labels_table,
            networks=networks,
            edges=edges,
            sigma0=sigma0,
            sigma1=sigma1,
            participants=participants,
            results=results,
            off_grid=np.setdiff1d(np.arange(1, A424_N_REGIONS + 1), shared["labels"]).tolist(),
            settings={
                "n_subjects": n_subjects, "n_trs": n_trs, "tr": tr, "bold_res": bold_res,
                "seed": seed,
                "atlas_sha256": sha256sum(atlas_img), "coordinates_sha256": sha256sum(coordinates),
                # only when used, so that files without them stay as they were
                **({"head_motion": raw["head_motion"]} if raw["head_motion"] is not None else {}),
                **({"dummy_volumes": raw["dummy_volumes"]} if raw["dummy_volumes"] else {}),
            },
        )
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    return {
        "out_dir": str(out_dir),
        "bids": str(out_dir / "bids"),
        "fmriprep": str(out_dir / "derivatives" / "fmriprep"),
        "ground_truth": str(out_dir / "ground_truth"),
        "subjects": [s["label"] for s in specs],
        "n_subjects": n_subjects,
        "n_trs": n_trs,
        "tr": tr,
        "bold_res": bold_res,
        "n_edges": len(edges),
        "n_files": sum(1 for p in out_dir.rglob("*") if p.is_file()),
        "seed": seed,
        "jobs": jobs,
    }


def bold_grid(atlas_affine: np.ndarray, res: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a ``res`` mm grid covering the A424 2 mm field of view.

    The voxel centres start at the atlas origin and run over the same extent, so at
    2 mm this is the atlas grid itself and at 4 mm every second atlas voxel.
    """
    span = (np.array(_ATLAS_SHAPE) - 1) * _ATLAS_RES
    shape = tuple(int(n) for n in np.floor(span / res + 1e-9).astype(int) + 1)
    affine = np.array(atlas_affine, dtype=float).copy()
    affine[:3, :3] = np.diag(np.sign(np.diag(atlas_affine)[:3]) * float(res))
    return shape, affine


def population_covariances(networks: np.ndarray, edges: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``Sigma0`` (non-responders) and ``Sigma1`` (responders); both unit-diagonal.

    ``networks`` holds the network (0..K-1) of each region in label order; ``edges``
    the 1-based labels ``region_i``, ``region_j`` of the planted edges.
    """
    n, k = len(networks), MODEL.n_networks
    loadings = np.zeros((n, k + 2))
    loadings[np.arange(n), networks] = MODEL.network_loading
    loadings[:, k] = MODEL.global_loading

    def covariance(b: np.ndarray) -> np.ndarray:
        sigma = b @ b.T
        return sigma + np.diag(1.0 - np.diag(sigma))  # unique variances: unit diagonal

    sigma0 = covariance(loadings)
    loadings[np.isin(networks, MODEL.responder_networks), k + 1] = MODEL.responder_loading
    sigma1 = covariance(loadings)
    i = edges["region_i"].to_numpy() - 1
    j = edges["region_j"].to_numpy() - 1
    sigma1[i, j] += MODEL.edge_delta
    sigma1[j, i] += MODEL.edge_delta
    for name, sigma in (("non-responder", sigma0), ("responder", sigma1)):
        if np.linalg.eigvalsh(sigma)[0] <= 0:
            raise RuntimeError(f"the {name} covariance is not positive definite; model constants are inconsistent")
    return sigma0, sigma1

# --------------------------------------------------------------------------- checks


def _check_args(n_subjects, n_trs, tr, bold_res, seed, jobs) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_subjects) or n_subjects < 2 or n_subjects % 2:
        raise ValueError(
            f"n_subjects must be an even integer of at least 2 (got {n_subjects!r}): "
            "responders and non-responders are balanced exactly"
        )
    if not is_int(n_trs) or n_trs < 20:
        raise ValueError(f"n_trs must be an integer of at least 20 (got {n_trs!r})")
    if isinstance(tr, bool) or not isinstance(tr, (int, float, np.number)) or not (0 < float(tr) <= 10):
        raise ValueError(f"tr must be a number of seconds in (0, 10] (got {tr!r})")
    if not is_int(bold_res) or bold_res not in BOLD_RESOLUTIONS:
        raise ValueError(f"bold_res must be one of {BOLD_RESOLUTIONS} (mm), got {bold_res!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (got {seed!r})")
    if not is_int(jobs) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer (got {jobs!r})")


def _check_raw_options(head_motion, dummy_volumes) -> None:
    if head_motion is not None and (isinstance(head_motion, bool) or not isinstance(head_motion, (int, float))
                                    or not 0 <= head_motion <= 20):
        raise ValueError(f"head_motion must be None or a number in [0, 20] (got {head_motion!r})")
    if isinstance(dummy_volumes, bool) or not isinstance(dummy_volumes, (int, np.integer)) or not 0 <= dummy_volumes <= 10:
        raise ValueError(f"dummy_volumes must be an integer in [0, 10] (got {dummy_volumes!r})")


def _load_atlas_labels(atlas: Any, path: str | Path) -> np.ndarray:
    if atlas.shape != _ATLAS_SHAPE:
        raise InputError(path, f"expected the A424 2 mm grid {_ATLAS_SHAPE}, got shape {atlas.shape}")
    affine = atlas.affine
    if not np.allclose(affine[:3, :3], np.diag([-_ATLAS_RES, _ATLAS_RES, _ATLAS_RES])):
        raise InputError(path, f"expected an axis-aligned 2 mm affine (LAS), got\n{affine}")
    labels = np.rint(np.asarray(atlas.dataobj)).astype(np.int16)
    present = np.unique(labels[labels > 0])
    if present.min() < 1 or present.max() > A424_N_REGIONS:
        raise InputError(path, f"labels must lie in 1..{A424_N_REGIONS}")
    return labels


# --------------------------------------------------------------------------- population


def _assign_networks(labels_table: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    # |x| so that homologous regions of the two hemispheres fall in the same network.
    points = np.column_stack([labels_table["x"].abs(), labels_table["y"], labels_table["z"]]).astype(float)
    _, assignment = kmeans2(points, MODEL.n_networks, minit="++", seed=rng)
    # Number networks by their first region, so names do not depend on k-means' order.
    order = {old: new for new, old in enumerate(dict.fromkeys(assignment.tolist()))}
    return np.array([order[a] for a in assignment], dtype=int)


def _choose_edges(labels: np.ndarray, affine: np.ndarray, networks: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    counts = np.bincount(labels.ravel(), minlength=A424_N_REGIONS + 1)[1:]
    ijk = np.argwhere(labels > 0)
    lab = labels[labels > 0].astype(int)
    xyz = nib.affines.apply_affine(affine, ijk)
    centroids = np.stack([np.bincount(lab, weights=xyz[:, a], minlength=A424_N_REGIONS + 1)[1:] for a in range(3)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids /= counts[:, None]
    far = np.linalg.norm(centroids - np.array(MODEL.dropout_center_mm), axis=1) >= MODEL.edge_min_dropout_distance_mm
    outside = ~np.isin(networks, MODEL.responder_networks)  # edge deltas stay exactly c
    candidates = np.flatnonzero((counts >= MODEL.edge_min_voxels) & far & outside)
    candidates = candidates[rng.permutation(len(candidates))]
    used: set[int] = set()
    pairs = []
    for a in candidates:
        if a in used:
            continue
        partner = next((b for b in candidates if b not in used and b != a and networks[b] != networks[a]), None)
        if partner is None:
            continue
        used.update((a, partner))
        pairs.append(tuple(sorted((int(a), int(partner)))))
        if len(pairs) == MODEL.n_edges:
            break
    if len(pairs) < MODEL.n_edges:
        raise RuntimeError("could not choose enough disjoint cross-network edges")
    pairs.sort()
    i, j = np.array(pairs).T
    return pd.DataFrame({"region_i": i + 1, "region_j": j + 1})


def _participants(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Balanced design: response exactly, drug within each response group and site as
    exactly as ``n`` allows (counts differ by at most one), both overall exact."""
    width = max(2, len(str(n)))
    half = n // 2
    response = np.repeat([0, 1], half)
    # drug alternates within each response group, starting on a different arm in each
    # group so that the arms are balanced overall even when n / 2 is odd
    drug = np.concatenate([np.arange(half) % 2, (np.arange(half) + 1) % 2])
    cells = np.lexsort((drug, response))  # subjects ordered by (response, drug) cell
    site = np.empty(n, int)
    site[cells] = np.arange(n) % 2  # sites alternate through the cells
    order = rng.permutation(n)
    return pd.DataFrame({
        "participant_id": [f"sub-{i + 1:0{width}d}" for i in range(n)],
        "age": rng.integers(20, 66, size=n),
        "sex": np.repeat(["F", "M"], half)[rng.permutation(n)],
        "response": response[order],
        "drug": np.array(["drugA", "drugB"])[drug[order]],
        "site": np.array(["site1", "site2"])[site[order]],
    })


# --------------------------------------------------------------------------- grids


def _axis_indices(src_affine, src_shape, dst_affine, dst_shape):
    """Nearest source index along each axis for a destination grid (axis-aligned affines)."""
    for aff in (src_affine, dst_affine):
        if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))):
            raise ValueError("only axis-aligned (diagonal) affines are supported")
    out = []
    for ax in range(3):
        world = dst_affine[ax, 3] + dst_affine[ax, ax] * np.arange(dst_shape[ax])
        idx = np.floor((world - src_affine[ax, 3]) / src_affine[ax, ax] + 0.5).astype(int)
        out.append((idx, (idx >= 0) & (idx < src_shape[ax])))
    return out


def _nearest(src: np.ndarray, src_affine, dst_affine, dst_shape, fill=0) -> np.ndarray:
    axes = _axis_indices(src_affine, src.shape, dst_affine, dst_shape)
    clipped = [np.clip(i, 0, n - 1) for (i, _), n in zip(axes, src.shape)]
    out = src[np.ix_(*clipped)].copy()
    valid = axes[0][1][:, None, None] & axes[1][1][None, :, None] & axes[2][1][None, None, :]
    out[~valid] = fill
    return out


def _shared_arrays(atlas, atlas_labels, grid_shape, grid_affine, raw_shape, raw_affine) -> dict:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=2)
    brain = load_mni152_brain_mask(resolution=2)
    t1 = np.asarray(template.get_fdata(), dtype=np.float32)
    labels = _nearest(atlas_labels, atlas.affine, grid_affine, grid_shape)
    mask = _nearest(np.asarray(brain.dataobj) > 0, brain.affine, grid_affine, grid_shape, fill=False)
    mask |= labels > 0
    t1_grid = _nearest(t1, template.affine, grid_affine, grid_shape)
    # raw grid -> BOLD grid flat (Fortran) index of the voxel it samples
    axes = _axis_indices(grid_affine, grid_shape, raw_affine, raw_shape)
    ii, jj, kk = np.meshgrid(*[np.clip(i, 0, n - 1) for (i, _), n in zip(axes, grid_shape)], indexing="ij")
    raw_source = np.ravel_multi_index((ii, jj, kk), grid_shape, order="F").ravel(order="F")
    return {
        "labels": labels,
        "mask": mask,
        "t1_grid": t1_grid,
        "grid_affine": grid_affine,
        "raw_affine": raw_affine,
        "raw_shape": raw_shape,
        "raw_source": raw_source,
        "template": t1,
        "template_affine": template.affine,
    }


# --------------------------------------------------------------------------- subjects


_WORKER_SHARED: dict | None = None


def _init_worker(shared: dict) -> None:
    global _WORKER_SHARED
    _WORKER_SHARED = shared


def _worker(spec: dict) -> dict:
    assert _WORKER_SHARED is not None
    with _single_threaded_blas():
        return _simulate_subject(spec, _WORKER_SHARED)


def _single_threaded_blas():
    """One BLAS thread: with one process per core, BLAS threads only contend (and
    measured slower even alone on a 2-core test machine); it also keeps float
    results independent of the machine's core count."""
    try:
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn (nilearn)
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _run_subjects(specs: list[dict], shared: dict, jobs: int) -> list[dict]:
    jobs = min(jobs, len(specs))
    if jobs == 1:
        return [_simulate_subject(spec, shared) for spec in specs]
    # fork on Linux: the workers inherit the arrays and never re-run the caller's
    # __main__, which spawn and forkserver do: plain scripts and Snakemake `script:`
    # files have no `if __name__ == "__main__"` guard and would recurse. Elsewhere
    # (macOS, Windows) spawn, whose callers need that guard.
    method = "fork" if sys.platform.startswith("linux") and "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context(method), initializer=_init_worker, initargs=(shared,)
    ) as pool:
        return list(pool.map(_worker, specs))


def _simulate_subject(spec: dict, shared: dict) -> dict:
    """Simulate one subject and write all of its files; return its ground-truth facts."""
    rng = np.random.default_rng(spec["seed_seq"])
    n_trs, tr = shared["n_trs"], shared["tr"]
    grid_affine = shared["grid_affine"]
    labels3d, mask3d = shared["labels"], shared["mask"].copy()
    shape = labels3d.shape

    # latent region signals: stationary VAR(1) with covariance Sigma of the group
    x = _var1(rng, shared["chol"][spec["response"]], MODEL.ar_coef(tr), n_trs)

    dropout = None
    if spec["dropout"]:
        centre = np.array(MODEL.dropout_center_mm) + rng.normal(0, MODEL.dropout_center_jitter_mm, 3)
        radius = rng.uniform(*MODEL.dropout_radius_mm)
        xyz = nib.affines.apply_affine(grid_affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
        mask3d &= np.linalg.norm(xyz - centre, axis=-1) > radius
        dropout = {"center_mm": centre.round(3).tolist(), "radius_mm": round(float(radius), 3)}
    motion, spikes = _motion(rng, n_trs, spec["spikes"])
    physio = _var1(rng, np.eye(2), MODEL.physio_ar_coef(tr), n_trs)  # csf, white matter
    cosines = dct_highpass_basis(n_trs, tr, MODEL.high_pass_cutoff_s)
    subject_scale = rng.uniform(*MODEL.baseline_subject_range)

    # in-mask voxels as flat (Fortran, NIfTI-order) indices, atlas voxels first so that
    # the region signal is added to a contiguous slice
    flat_labels = labels3d.ravel(order="F")
    flat_mask = mask3d.ravel(order="F")
    in_gm = np.flatnonzero(flat_mask & (flat_labels > 0))
    vox = np.concatenate([in_gm, np.flatnonzero(flat_mask & (flat_labels == 0))])
    n_gm = len(in_gm)
    t1v = shared["t1_grid"].ravel(order="F")[vox]
    xyz = nib.affines.apply_affine(grid_affine, np.array(np.unravel_index(vox, shape, order="F")).T)
    bold, baseline, csf, wm = _voxel_bold(
        rng, x, flat_labels[in_gm].astype(np.intp) - 1, t1v, xyz, motion, physio, cosines, subject_scale
    )
    confounds, confounds_meta = _confounds(bold, motion, physio, cosines, baseline, csf, wm, n_gm)

    raw_truth = _write_subject_files(
        rng, spec, shared, bold=bold, vox=vox, mask3d=mask3d, confounds=confounds,
        confounds_meta=confounds_meta, x=x, subject_scale=subject_scale, motion=motion,
    )

    # coverage: regions partly or wholly outside this subject's mask
    on_grid = np.bincount(flat_labels, minlength=A424_N_REGIONS + 1)[1:]
    seen = np.bincount(flat_labels[in_gm], minlength=A424_N_REGIONS + 1)[1:]
    fd = confounds["framewise_displacement"].to_numpy()
    return {
        "participant_id": f"sub-{spec['label']}",
        "response": spec["response"],
        "group": "responder" if spec["response"] else "non-responder",
        "dropout": dropout,
        "motion_spikes_volume": spikes,
        "n_motion_outliers": int(sum(c.startswith("motion_outlier") for c in confounds.columns)),
        "mean_framewise_displacement": round(float(np.nanmean(fd)), 6),
        "n_voxels_in_mask": len(vox),
        "regions_partial_coverage": (np.flatnonzero((seen < on_grid) & (seen > 0)) + 1).tolist(),
        "regions_absent": (np.flatnonzero(seen == 0) + 1).tolist(),
        "baseline_scale": round(float(subject_scale), 6),
        **raw_truth,
    }


def _var1(rng: np.random.Generator, chol: np.ndarray, phi: float, n_trs: int) -> np.ndarray:
    """Stationary VAR(1) ``x_t = phi x_{t-1} + sqrt(1 - phi^2) L e_t``, ``x_0 = L e_0``:
    every ``x_t`` has covariance ``L L'`` exactly."""
    innov = rng.standard_normal((n_trs, chol.shape[0])) @ chol.T
    x = np.empty_like(innov)
    x[0] = innov[0]
    scale = np.sqrt(1.0 - phi**2)
    for t in range(1, n_trs):
        x[t] = phi * x[t - 1] + scale * innov[t]
    return x


def _voxel_bold(rng, x, region, t1v, xyz, motion, physio, cosines, subject_scale):
    """The voxel model of the module docstring: (time x voxel) float32 BOLD.

    The first ``len(region)`` voxels are atlas voxels of ``region`` (0-based); the rest
    are in-mask voxels outside the atlas, split into CSF (darker T1) and WM (brighter).
    """
    n_trs, n_vox, n_gm = len(x), len(t1v), len(region)
    wm = np.zeros(n_vox, bool)
    wm[n_gm:] = t1v[n_gm:] >= np.median(t1v[n_gm:])
    csf = np.zeros(n_vox, bool)
    csf[n_gm:] = ~wm[n_gm:]

    baseline = (MODEL.baseline_intercept + MODEL.baseline_t1_slope * t1v) * subject_scale
    baseline *= 1 + MODEL.baseline_voxel_jitter * rng.standard_normal(n_vox)
    baseline = baseline.astype(np.float32)

    # nuisance weights: smooth spatial patterns (linear in position) plus voxel scatter
    design = np.column_stack([np.ones(n_vox), xyz / np.array([70.0, 90.0, 60.0])])

    def pattern(n):
        return design @ rng.standard_normal((4, n)) + MODEL.spatial_scatter * rng.standard_normal((n_vox, n))

    motion_mm = motion.copy()
    motion_mm[:, 3:] *= MODEL.motion_rot_radius_mm  # radians -> mm of arc
    w_motion = MODEL.motion_pct_per_mm * pattern(6)
    own = np.column_stack([
        np.where(csf, MODEL.csf_weight_own, MODEL.physio_weight_other),
        np.where(wm, MODEL.wm_weight_own, MODEL.physio_weight_other),
    ])
    w_physio = own * (1 + MODEL.physio_weight_jitter * rng.standard_normal((n_vox, 2)))
    n_cos = cosines.shape[1]
    w_drift = pattern(n_cos) * (MODEL.drift_pct / np.arange(1, n_cos + 1)) if n_cos else np.zeros((n_vox, 0))
    # cosines scaled to unit amplitude, so the drift weights are in percent
    regressors = np.column_stack([motion_mm, physio, cosines * np.sqrt(n_trs / 2.0)]).astype(np.float32)
    weights_t = np.ascontiguousarray(np.column_stack([w_motion, w_physio, w_drift]).T, dtype=np.float32)

    xs = x.astype(np.float32)
    amp = np.float32(MODEL.signal_pct)
    pct_scale = baseline * np.float32(0.01)
    bold = np.empty((n_trs, n_vox), np.float32)
    for t0 in range(0, n_trs, _TR_CHUNK):  # float32, in TR chunks to bound the temporaries
        sl = slice(t0, min(n_trs, t0 + _TR_CHUNK))
        p = rng.standard_normal((sl.stop - sl.start, n_vox), dtype=np.float32)
        p *= np.float32(MODEL.noise_pct)
        p += regressors[sl] @ weights_t
        p[:, :n_gm] += amp * xs[sl][:, region]
        p *= pct_scale
        p += baseline
        # Round to 1/16: the quantisation SD (0.018) is ~1e-3 of the noise SD, and the
        # zeroed low mantissa bits make the gzip files ~30 % smaller and faster to write.
        p *= np.float32(_QUANTUM_INV)
        np.rint(p, out=p)
        p /= np.float32(_QUANTUM_INV)
        bold[sl] = p
    return bold, baseline, csf, wm


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

    # raw BIDS: the same volumes on the 4 mm grid, int16 (see the module docstring)
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
        write_tsv(root / "ground_truth" / f"{sub}_desc-headmotion_timeseries.tsv", pd.DataFrame(params, columns=list(_MOTION)))
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

    from .confounds import rigid_matrix

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


def _motion(rng: np.random.Generator, n_trs: int, with_spikes: bool) -> tuple[np.ndarray, list[int]]:
    """Six rigid-body parameters (mm, mm, mm, rad, rad, rad): smoothed random walks + spikes."""
    from scipy.ndimage import gaussian_filter1d

    level = np.exp(rng.normal(0.0, MODEL.motion_level_log_sd))
    steps = rng.standard_normal((n_trs, 6)) * level
    steps[:, :3] *= MODEL.motion_trans_step_mm
    steps[:, 3:] *= MODEL.motion_rot_step_rad
    walk = gaussian_filter1d(np.cumsum(steps, axis=0), MODEL.motion_smooth_tr, axis=0, mode="nearest")
    walk -= walk[0]
    spikes: list[int] = []
    if with_spikes:
        lo, hi = MODEL.spike_count_range
        n = int(rng.integers(lo, hi + 1))
        spikes = sorted(rng.choice(np.arange(2, n_trs - 2), size=n, replace=False).tolist())
        for t in spikes:
            direction = rng.standard_normal(3)
            walk[t, :3] += direction / np.linalg.norm(direction) * rng.uniform(*MODEL.spike_trans_mm)
            rot = rng.standard_normal(3)
            walk[t, 3:] += rot / np.linalg.norm(rot) * rng.uniform(*MODEL.spike_rot_rad)
    return walk, spikes


# --------------------------------------------------------------------------- confounds


def _confounds(bold, motion, physio, cosines, baseline, csf, wm, n_gm):
    n_trs, n_vox = bold.shape
    columns: dict[str, np.ndarray] = {}
    gs = bold.mean(axis=1, dtype=np.float64)
    csf_col = baseline[csf].mean(dtype=np.float64) * (1 + 0.01 * MODEL.csf_weight_own * physio[:, 0])
    wm_col = baseline[wm].mean(dtype=np.float64) * (1 + 0.01 * MODEL.wm_weight_own * physio[:, 1])
    for name, values in (("global_signal", gs), ("csf", csf_col), ("white_matter", wm_col)):
        columns.update(expansions(name, values))

    # One pass over contiguous (voxel x time) float32 blocks, sums accumulated in float64:
    # the per-voxel statistics of DVARS and the CompCor inputs.
    basis = np.linalg.qr(np.column_stack([np.ones(n_trs), cosines]))[0].astype(np.float32)
    k25, k75 = int(np.floor(0.25 * (n_trs - 1))), int(np.floor(0.75 * (n_trs - 1)))  # "lower" percentiles
    diff_sq = np.zeros(n_trs - 1)
    sd_sum = 0.0
    variance = np.empty(n_vox)
    gram_a = np.zeros((n_trs, n_trs))
    for v0 in range(0, n_vox, _VOXEL_CHUNK):
        block = np.ascontiguousarray(bold[:, v0 : v0 + _VOXEL_CHUNK].T)
        # DVARS (nipype ComputeDVARS): robust SD (IQR / 1.349), lag-1 autocorrelation
        # (Yule-Walker), predicted SD of the temporal difference, RMS of the differences.
        part = np.partition(block, (k25, k75), axis=1)
        sd = (part[:, k75].astype(np.float64) - part[:, k25]) / 1.349
        centred = block - block.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        denom = np.einsum("vt,vt->v", centred, centred, dtype=np.float64)
        lag1 = np.einsum("vt,vt->v", centred[:, 1:], centred[:, :-1], dtype=np.float64)
        ar1 = lag1 / np.where(denom > 0, denom, 1.0)
        ok = sd > 0  # nipype drops zero-variance voxels
        sd_sum += float((np.sqrt(2 * (1 - ar1[ok])) * sd[ok]).sum())
        d = np.diff(block, axis=1)
        diff_sq += np.square(d).sum(axis=0, dtype=np.float64)
        # CompCor input: mean and cosines removed, each voxel scaled to unit variance.
        resid = centred - (centred @ basis) @ basis.T
        var = np.einsum("vt,vt->v", resid, resid, dtype=np.float64) / n_trs
        variance[v0 : v0 + len(block)] = var
        # aCompCor voxels: in-mask voxels outside the atlas labels (WM + CSF), index >= n_gm
        sel = (np.arange(v0, v0 + len(block)) >= n_gm) & (var > 0)
        if sel.any():
            z = resid[sel] / np.sqrt(var[sel]).astype(np.float32)[:, None]
            gram_a += z.T @ z
    # intensity normalisation (median of the mean image to 1000) scales dvars and sd alike
    norm = MODEL.dvars_intensity_normalization / np.median(bold.mean(axis=0, dtype=np.float64))
    dvars = norm * np.sqrt(diff_sq / n_vox)
    std_dvars = dvars / (norm * sd_sum / n_vox)
    n_top = max(int(np.ceil(MODEL.tcompcor_fraction * n_vox)), MODEL.n_compcor + 1)
    top = np.sort(np.argsort(variance, kind="stable")[-n_top:])
    block = np.ascontiguousarray(bold[:, top].T, dtype=np.float64)
    resid = block - (block @ basis) @ basis.T
    z = resid / np.sqrt(np.einsum("vt,vt->v", resid, resid) / n_trs)[:, None]
    gram_t = z.T @ z
    # Project the pre-filter out of the Gram matrices in float64 as well, so the float32
    # rounding leaves no trace of the mean or the cosines in the components.
    basis64 = np.linalg.qr(np.column_stack([np.ones(n_trs), cosines]))[0]
    filt = np.eye(n_trs) - basis64 @ basis64.T
    a_comp, a_meta = _pca_components(filt @ gram_a @ filt, "a_comp_cor", {"Method": "aCompCor", "Mask": "combined"})
    t_comp, t_meta = _pca_components(filt @ gram_t @ filt, "t_comp_cor", {"Method": "tCompCor"})

    fd = framewise_displacement(motion, MODEL.motion_rot_radius_mm)
    columns["std_dvars"] = np.concatenate([[np.nan], std_dvars])
    columns["dvars"] = np.concatenate([[np.nan], dvars])
    columns["framewise_displacement"] = fd
    columns.update(t_comp)
    columns.update(a_comp)
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = cosines[:, k]
    for i, name in enumerate(_MOTION):
        columns.update(expansions(name, motion[:, i]))
    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > MODEL.fd_threshold_mm) | (np.nan_to_num(columns["std_dvars"]) > MODEL.std_dvars_threshold)
    )
    columns.update(one_hot_columns("motion_outlier", outliers, n_trs))
    meta = {**t_meta, **a_meta}
    for k in range(cosines.shape[1]):
        meta[f"cosine{k:02d}"] = {
            "Method": "DCT-II high-pass basis",
            "CutoffPeriod": MODEL.high_pass_cutoff_s,
            "Description": "Discrete cosine regressor of the high-pass filter (constant term dropped).",
        }
    return pd.DataFrame(columns), meta


def _pca_components(gram: np.ndarray, prefix: str, fields: dict) -> tuple[dict, dict]:
    """Leading left singular vectors of the (time x voxel) matrix, from its Gram matrix."""
    evals, evecs = np.linalg.eigh((gram + gram.T) / 2)
    evals, evecs = evals[::-1].clip(min=0), evecs[:, ::-1]
    singular = np.sqrt(evals)
    explained = evals / evals.sum()
    cumulative = np.cumsum(explained)
    comps, meta = {}, {}
    for k in range(MODEL.n_compcor):
        u = evecs[:, k]
        u = u * (1.0 if u[np.argmax(np.abs(u))] >= 0 else -1.0)  # fixed sign convention
        name = f"{prefix}_{k:02d}"
        comps[name] = u
        meta[name] = {
            **fields,
            "Retained": True,
            "SingularValue": float(singular[k]),
            "VarianceExplained": float(explained[k]),
            "CumulativeVarianceExplained": float(cumulative[k]),
        }
    return comps, meta


# --------------------------------------------------------------------------- writing


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


def _write_bids_top(bids: Path, participants: pd.DataFrame, n_trs: int, tr: float, raw: dict) -> None:
    bids.mkdir(parents=True, exist_ok=True)
    write_json(bids / "dataset_description.json", {
        "Name": "fmriflow synthetic resting-state demo",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["fmriflow demo generator"],
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
        "in ../ground_truth/ground_truth.json.\n"
    ))
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
    }))
    model = asdict(MODEL)
    model["ar_coef"] = MODEL.ar_coef(settings["tr"])
    model["physio_ar_coef"] = MODEL.physio_ar_coef(settings["tr"])
    model["unique_variance"] = 1 - MODEL.network_loading**2 - MODEL.global_loading**2
    model["within_network_corr"] = MODEL.network_loading**2 + MODEL.global_loading**2
    model["between_network_corr"] = MODEL.global_loading**2
    model["responder_network_corr_increase"] = MODEL.responder_loading**2
    info = {
        "Description": (
            "Ground truth of the fmriflow synthetic demo. Region signals follow a VAR(1) whose "
            "stationary covariance is Sigma0 = B B' + D (non-responders) or Sigma1 (responders): "
            "Sigma0 with a factor of loading 'responder_loading' on the 'responder_networks' and "
            "'edge_delta' added on the listed edges; see fmriflow.demo's docstring."
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
            "regions": "regions.tsv (network of each region; responder_network, edge_region, planted)",
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
