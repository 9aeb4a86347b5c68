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

    Responders also differ in their dynamics, where zero-lag FC cannot see it: the factor of
    one more network (``dynamics_network``, not a responder network) is an AR(1) whose lag-1
    autocorrelation is 0.9 at TR 2 s for responders, 0.6 for non-responders (next section).

    So the correlation difference is exactly ``h**2`` inside the responder networks,
    ``c`` on the edges and zero elsewhere (``ground_truth/regions.tsv`` marks the
    regions of both). The unique variance is at least ``1 - lam**2 - g**2 - h**2 =
    0.3275 > c`` and the edge perturbation has eigenvalues ``+-c``, so ``Sigma1`` is
    positive definite (also checked numerically). Edge regions have at least 40
    voxels and lie far from the dropout sphere, so every subject observes them.
Region signals
    A stationary VAR(1), ``x_t = phi x_{t-1} + sqrt(1 - phi**2) L eps_t`` with
    ``L = chol(Sigma - lam**2 a a')`` (``a`` marks the dynamics network's regions),
    ``eps_t ~ N(0, I)`` and ``x_0 = L eps_0``, plus ``lam a f_t`` with ``f`` a unit-variance
    AR(1) of coefficient ``phi_f``: so ``Sigma`` is the exact covariance of every ``x_t``
    in both groups. ``phi = 0.6 ** (TR / 2 s)`` gives lag-1 autocorrelation 0.6 at TR 2 s
    whatever the TR; ``phi_f`` is ``phi`` for non-responders and ``0.9 ** (TR / 2 s)`` for
    responders, whose dynamics-network regions then have lag-1 autocorrelation
    ``lam**2 phi_f + (1 - lam**2) phi`` (0.708 at TR 2 s, against 0.6).
Age
    Ages are uniform integers in [20, 65]. A subject's region signals ``x`` are scaled by
    ``1 - 0.15 z`` with ``z = (age - 42.5) / 22.5`` in [-1, 1]: the resting-state fluctuation
    amplitude falls with age (Garrett et al. 2010; Tsvetanov et al. 2015, largely vascular),
    old/young ratio 0.74. Scaling leaves every correlation, the group design and the planted
    edges as above; age becomes predictable from the signals' amplitude (in percent signal change,
    beside the baseline's subject scale). Truth: ``signal_amplitude`` per subject in
    ``ground_truth.json``, ``age_amplitude`` and ``age_range`` in its model.
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
Structural connectomes
    Streamline counts per subject on the same regions and networks (``fmriflow.sc.demo``): denser
    within networks, and the responders' structural effect on networks 3 and 4, which the fMRI
    effect above leaves alone, so the group difference is split between FC and structure.
Pretraining cohort (option ``pretraining_subjects``; 0 by default)
    A second, larger, unlabelled cohort for pretraining a foundation model, written as ready-made
    A424 region time series in XCP-D's layout under ``pretraining/``: the same networks, each
    subject's network dynamics drawn over a range spanning both groups above, no outcome
    (``fmriflow.demo.pretraining``).
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
      derivatives/qsirecon/      structural connectomes as MRtrix tck2connectome writes them (fmriflow.sc.demo)
        sub-XX/dwi/sub-XX_space-MNI152NLin6Asym_seg-A424_desc-streamlinecount_connectome.csv
        seg-A424_desc-volume_regions.tsv, ground_truth_sc.json, dataset_description.json
      ground_truth/
        edges.tsv, regions.tsv, ground_truth.json, sub-XX_desc-true_timeseries.tsv
      pretraining/               (pretraining_subjects > 0) the unlabelled cohort
        xcp_d/participants.tsv, xcp_d/sub-ptNNN/func/..._atlas-A424_stat-mean_timeseries.tsv/.json
        atlas-A424_dseg.tsv, ground_truth.json

``res-2`` appears only when ``bold_res`` is 2 (the A424 grid itself).

Modules
-------
This package holds ``generate_demo``, which checks the arguments, draws the population
and runs the subjects (in parallel processes when ``jobs`` > 1). The rest is in
``model`` (constants, grids, population), ``signals`` (region signals, motion, voxel
BOLD), ``confounds`` (the confounds table, through :mod:`fmriflow.confounds`) and
``writers`` (every file).
"""


from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..atlas import A424_N_REGIONS, a424_labels_table
from ..datasets.participants import bare
from ..confounds import dct_highpass_basis
from ..io import sha256sum
from ..progress import progress
from .confounds import _confounds
from .model import (
    BOLD_RESOLUTIONS, MODEL, RAW_RES, DemoModel, Population, _draw_population,
    _dropout_sphere, _load_atlas_labels, _shared_arrays, bold_grid, dynamics_factor_removed, population_covariances,
)
from ..sc.demo import MODEL as SC_MODEL
from ..sc.demo import SCModel, write_demo_connectomes
from .pretraining import write_pretraining_cohort
from .signals import _motion, _var1, _voxel_bold
# _generate calls the writers by these names, so replacing fmriflow.demo._write_ground_truth
# (as a test does, to simulate a crash) takes effect.
from .writers import (
    GENERATOR_NAME, TASK, _move_into_place, _write_bids_top, _write_fmriprep_top, _write_ground_truth,
    _write_subject_files,
)

__all__ = [
    "BOLD_RESOLUTIONS", "GENERATOR_NAME", "MODEL", "RAW_RES", "TASK", "DemoModel", "bold_grid", "generate_demo",
    "population_covariances",
]


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
    pretraining_subjects: int = 0,
    pretraining_trs: int | None = None,
    responder_loading: float | None = None,
    sc_effect: float | None = None, sc_block_sd: float | None = None,
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
    pretraining_subjects : int
        Subjects of the unlabelled pretraining cohort written under ``pretraining/`` as
        ready-made A424 region time series (``fmriflow.demo.pretraining``), one run of
        ``pretraining_trs`` volumes (None: ``n_trs``) at ``tr`` each; 0 (default): none.
    responder_loading, sc_effect, sc_block_sd : float or None
        The FC effect (responders' extra factor loading, in [0, 0.6]) and the connectomes' (``SCModel``'s
        ``effect`` and spread per pair of networks ``block_sd``); None (default): 0.5, 0.25, 0. The
        BrainSymphony fusion demo splits the group difference between FC and SC with 0.2, 0.5, 0.15.

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
    raw = _options(head_motion, dummy_volumes, pretraining_subjects, n_trs if pretraining_trs is None else pretraining_trs,
                   responder_loading, sc_effect, sc_block_sd)
    with _single_threaded_blas():
        return _generate(Path(out_dir), atlas_img, coordinates, n_subjects, n_trs, float(tr), bold_res, seed, jobs, overwrite, raw)


def _generate(out_dir, atlas_img, coordinates, n_subjects, n_trs, tr, bold_res, seed, jobs, overwrite, raw):
    _check_out_dir(out_dir, overwrite)
    labels_table = a424_labels_table(coordinates)
    atlas = nib.load(atlas_img)
    atlas_labels = _load_atlas_labels(atlas, atlas_img)
    grid_shape, grid_affine = bold_grid(atlas.affine, bold_res)
    raw_shape, raw_affine = bold_grid(atlas.affine, RAW_RES)

    seq = np.random.SeedSequence(seed)
    pop_seq, *subject_seqs = seq.spawn(n_subjects + 1)
    loading = MODEL.responder_loading if raw["responder_loading"] is None else raw["responder_loading"]
    population = _draw_population(labels_table, atlas_labels, atlas.affine, n_subjects, np.random.default_rng(pop_seq),
                                  responder_loading=loading)
    chol = {g: np.linalg.cholesky(dynamics_factor_removed(sigma, population.networks))
            for g, sigma in ((0, population.sigma0), (1, population.sigma1))}

    shared = _shared_arrays(atlas, atlas_labels, grid_shape, grid_affine, raw_shape, raw_affine)
    shared.update(
        chol=chol, dynamics_regions=np.flatnonzero(population.networks == MODEL.dynamics_network), n_trs=n_trs, tr=tr, bold_res=bold_res, region_names=list(labels_table["name"]), **raw
    )
    specs = _subject_specs(population, subject_seqs)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.incomplete-", dir=out_dir.parent))
    try:
        shared["root"] = str(staging)
        _write_bids_top(staging / "bids", population.participants, n_trs, tr, raw)
        _write_fmriprep_top(staging / "derivatives" / "fmriprep")
        results = _run_subjects(specs, shared, jobs)
        if raw["pretraining_subjects"]:
            write_pretraining_cohort(staging / "pretraining", seq.spawn(1)[0], population.networks, labels_table,
                                     raw["pretraining_subjects"], raw["pretraining_trs"], tr)
        _write_ground_truth(
            staging / "ground_truth",
            labels_table=labels_table,
            networks=population.networks,
            edges=population.edges,
            sigma0=population.sigma0,
            sigma1=population.sigma1,
            participants=population.participants,
            results=results,
            off_grid=np.setdiff1d(np.arange(1, A424_N_REGIONS + 1), shared["labels"]).tolist(),
            settings={
                "n_subjects": n_subjects, "n_trs": n_trs, "tr": tr, "bold_res": bold_res,
                "seed": seed,
                "atlas_sha256": sha256sum(atlas_img), "coordinates_sha256": sha256sum(coordinates),
                # only when used, so that files without them stay as they were
                **({"head_motion": raw["head_motion"]} if raw["head_motion"] is not None else {}),
                **({"dummy_volumes": raw["dummy_volumes"]} if raw["dummy_volumes"] else {}),
                **({key: raw[key] for key in ("pretraining_subjects", "pretraining_trs")} if raw["pretraining_subjects"] else {}),
                **({"responder_loading": raw["responder_loading"]} if raw["responder_loading"] is not None else {}),
                **raw["sc_options"],
            },
        )
        # diffusion-derived connectomes of the same subjects and networks (a stream of their own: the BOLD
        # stays as it was); the structural half of the responder effect (fmriflow.sc.demo)
        write_demo_connectomes(staging / "derivatives" / "qsirecon", staging / "ground_truth" / "ground_truth.json",
                               seed=seed, model=raw["sc"])
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    return {
        "out_dir": str(out_dir),
        "bids": str(out_dir / "bids"),
        "fmriprep": str(out_dir / "derivatives" / "fmriprep"),
        "qsirecon": str(out_dir / "derivatives" / "qsirecon"),
        "ground_truth": str(out_dir / "ground_truth"),
        "subjects": [s["label"] for s in specs],
        "n_subjects": n_subjects,
        "n_trs": n_trs,
        "tr": tr,
        "bold_res": bold_res,
        "n_edges": len(population.edges),
        "n_files": sum(1 for p in out_dir.rglob("*") if p.is_file()),
        "seed": seed,
        "jobs": jobs,
    }


def _options(head_motion, dummy_volumes, pretraining_subjects, pretraining_trs, responder_loading, sc_effect,
             sc_block_sd) -> dict[str, Any]:
    """The checked options of ``generate_demo`` beyond the grid and the cohort (``_generate``'s ``raw``)."""
    _check_raw_options(head_motion, dummy_volumes)
    for name, value, least in (("pretraining_subjects", pretraining_subjects, 0), ("pretraining_trs", pretraining_trs, 20)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"'{name}' must be an integer of at least {least}; {value!r} was provided")
    if responder_loading is not None and (isinstance(responder_loading, bool) or not isinstance(responder_loading, (int, float))
                                          or not 0.0 <= responder_loading <= MODEL.network_loading):
        raise ValueError(f"'responder_loading' must be a number in [0, {MODEL.network_loading}] or None; "
                         f"{responder_loading!r} was provided")
    return {"head_motion": None if head_motion is None else float(head_motion), "dummy_volumes": int(dummy_volumes),
            "pretraining_subjects": int(pretraining_subjects), "pretraining_trs": int(pretraining_trs),
            "responder_loading": None if responder_loading is None else float(responder_loading),
            "sc": _sc_model(sc_effect, sc_block_sd),
            "sc_options": {f"sc_{k}": float(v) for k, v in (("effect", sc_effect), ("block_sd", sc_block_sd)) if v is not None}}


def _sc_model(effect: float | None, block_sd: float | None) -> SCModel:
    """The connectome model with the demo-data options that are set (``fmriflow.sc.demo``)."""
    for name, value in (("sc_effect", effect), ("sc_block_sd", block_sd)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2):
            raise ValueError(f"'{name}' must be a number in [0, 2] or None; {value!r} was provided")
    changes = {k: float(v) for k, v in (("effect", effect), ("block_sd", block_sd)) if v is not None}
    return replace(SC_MODEL, **changes)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True to replace it, "
            "or choose another folder"
        )


def _subject_specs(population: Population, subject_seqs: list) -> list[dict]:
    """What a worker needs to simulate each subject: label, group, seed, dropout and spikes."""
    return [
        {
            "label": bare(row.participant_id),
            "response": int(row.response),
            "amplitude": MODEL.signal_amplitude(row.age),
            "seed_seq": subject_seqs[i],
            "dropout": bool(population.has_dropout[i]),
            "spikes": bool(population.has_spikes[i]),
        }
        for i, row in enumerate(population.participants.itertuples())
    ]


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
        return [_simulate_subject(spec, shared) for spec in progress(specs, desc="demo subjects", unit="subject")]
    # fork on Linux: the workers inherit the arrays and never re-run the caller's
    # __main__, which spawn and forkserver do: plain scripts and Snakemake `script:`
    # files have no `if __name__ == "__main__"` guard and would recurse. Elsewhere
    # (macOS, Windows) spawn, whose callers need that guard.
    method = "fork" if sys.platform.startswith("linux") and "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context(method), initializer=_init_worker, initargs=(shared,)
    ) as pool:
        return list(progress(pool.map(_worker, specs), desc="demo subjects", total=len(specs), unit="subject"))


def _simulate_subject(spec: dict, shared: dict) -> dict:
    """Simulate one subject and write all of its files; return its ground-truth facts."""
    rng = np.random.default_rng(spec["seed_seq"])
    n_trs, tr = shared["n_trs"], shared["tr"]
    grid_affine = shared["grid_affine"]
    labels3d, mask3d = shared["labels"], shared["mask"].copy()
    shape = labels3d.shape

    # latent region signals: stationary VAR(1) with covariance Sigma of the group less the
    # dynamics network's factor, which is added as an AR(1) of the group's coefficient
    x = _var1(rng, shared["chol"][spec["response"]], MODEL.ar_coef(tr), n_trs)
    factor = _var1(rng, np.ones((1, 1)), MODEL.dynamics_ar_coef(tr, bool(spec["response"])), n_trs)
    x[:, shared["dynamics_regions"]] += MODEL.network_loading * factor
    x *= spec["amplitude"]  # age: lower fluctuation amplitude (correlations and the group design unchanged)

    dropout = None
    if spec["dropout"]:
        outside, dropout = _dropout_sphere(rng, grid_affine, shape)
        mask3d &= outside
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
        "signal_amplitude": round(float(spec["amplitude"]), 6),
        **raw_truth,
    }


