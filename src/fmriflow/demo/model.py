"""The demo's generative model: its constants, the grids it lives on, the population.

Holds ``DemoModel`` (every constant; ``MODEL`` the instance used), the BOLD grids and the
arrays on them that every subject shares (atlas labels, brain mask, T1 intensities), the
population draw (networks, planted edges, the two group covariances, participants, who
has signal dropout or motion spikes) and a subject's dropout sphere. The model itself is
described in the package docstring (``fmriflow.demo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from ..atlas import A424_N_REGIONS
from ..errors import InputError

RAW_RES = 4
BOLD_RESOLUTIONS = (2, 3, 4)
_ATLAS_SHAPE = (91, 109, 91)
_ATLAS_RES = 2.0


@dataclass(frozen=True, kw_only=True)
class DemoModel:
    """Every constant of the generative model (see the ``fmriflow.demo`` docstring).

    Keyword-only: the fields are grouped by the part of the model they set, so their
    order is no interface (``ground_truth.json`` lists them sorted by name).
    """

    # networks, planted edges, and the responders' network factor
    n_networks: int = 8
    network_loading: float = 0.6
    global_loading: float = 0.25
    n_edges: int = 16
    edge_delta: float = 0.3
    edge_min_voxels: int = 40
    edge_min_dropout_distance_mm: float = 45.0
    responder_networks: tuple[int, ...] = (0, 1)
    responder_loading: float = 0.5
    # responders' slower dynamics: the factor of this network (not a responder network) is an
    # AR(1) with this lag-1 autocorrelation at TR 2 s for responders, ar_coef_at_tr2 for the others
    dynamics_network: int = 2
    dynamics_ar_coef_at_tr2: float = 0.9
    # region signals and the voxel model
    ar_coef_at_tr2: float = 0.6
    signal_pct: float = 1.0
    noise_pct: float = 1.5
    baseline_subject_range: tuple[float, float] = (0.8, 1.2)
    baseline_intercept: float = 1100.0
    baseline_t1_slope: float = -500.0
    baseline_voxel_jitter: float = 0.03
    # age: participants' ages are uniform integers over age_range; a subject's region signals are
    # scaled by 1 - age_amplitude z, z its age mapped to [-1, 1] (lower fluctuation amplitude with age)
    age_range: tuple[int, int] = (20, 65)
    age_amplitude: float = 0.15
    # nuisance: motion and its spikes, CSF and white matter, drift
    motion_trans_step_mm: float = 0.03
    motion_rot_step_rad: float = 0.0006
    motion_level_log_sd: float = 0.4
    motion_smooth_tr: float = 1.5
    motion_rot_radius_mm: float = 50.0
    motion_pct_per_mm: float = 0.6
    spike_fraction: float = 0.5
    spike_count_range: tuple[int, int] = (1, 3)
    spike_trans_mm: tuple[float, float] = (0.6, 1.5)
    spike_rot_rad: tuple[float, float] = (0.002, 0.005)
    physio_ar_coef_at_tr2: float = 0.9
    csf_weight_own: float = 2.0
    wm_weight_own: float = 1.5
    physio_weight_other: float = 0.3
    physio_weight_jitter: float = 0.25
    drift_pct: float = 1.0
    spatial_scatter: float = 0.5
    # brain mask dropout and the raw BOLD grid
    dropout_fraction: float = 0.5
    dropout_center_mm: tuple[float, float, float] = (0.0, 36.0, -22.0)
    dropout_center_jitter_mm: float = 3.0
    dropout_radius_mm: tuple[float, float] = (12.0, 20.0)
    raw_res_mm: int = RAW_RES
    # confounds
    high_pass_cutoff_s: float = 128.0
    n_compcor: int = 5
    tcompcor_fraction: float = 0.02
    fd_threshold_mm: float = 0.5
    std_dvars_threshold: float = 1.5
    dvars_intensity_normalization: float = 1000.0

    def ar_coef(self, tr: float) -> float:
        return self.ar_coef_at_tr2 ** (tr / 2.0)

    def physio_ar_coef(self, tr: float) -> float:
        return self.physio_ar_coef_at_tr2 ** (tr / 2.0)

    def dynamics_ar_coef(self, tr: float, responder: bool) -> float:
        """Lag-1 autocorrelation of the dynamics network's factor at ``tr``, per group."""
        return (self.dynamics_ar_coef_at_tr2 if responder else self.ar_coef_at_tr2) ** (tr / 2.0)

    def signal_amplitude(self, age: float) -> float:
        """Factor on a subject's region signals at ``age``: ``1 - age_amplitude z``, ``z`` in [-1, 1] over age_range."""
        low, high = self.age_range
        return 1.0 - self.age_amplitude * (float(age) - (low + high) / 2) / ((high - low) / 2)

    def region_lag1(self, tr: float, responder: bool) -> float:
        """Lag-1 autocorrelation of a dynamics-network region's signal: the factor's share
        ``network_loading**2`` at the factor's coefficient, the rest at ``ar_coef``."""
        share = self.network_loading ** 2
        return share * self.dynamics_ar_coef(tr, responder) + (1 - share) * self.ar_coef(tr)


MODEL = DemoModel()


# --------------------------------------------------------------------------- grids


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


def _dropout_sphere(rng: np.random.Generator, grid_affine: np.ndarray, shape: tuple) -> tuple[np.ndarray, dict]:
    """A subject's signal-dropout sphere: the grid voxels outside it, and its centre and radius."""
    centre = np.array(MODEL.dropout_center_mm) + rng.normal(0, MODEL.dropout_center_jitter_mm, 3)
    radius = rng.uniform(*MODEL.dropout_radius_mm)
    xyz = nib.affines.apply_affine(grid_affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    outside = np.linalg.norm(xyz - centre, axis=-1) > radius
    return outside, {"center_mm": centre.round(3).tolist(), "radius_mm": round(float(radius), 3)}


# --------------------------------------------------------------------------- population


@dataclass(frozen=True)
class Population:
    """What child 0 of the seed draws: the model's networks and edges, the participants,
    and which subjects have signal dropout or motion spikes."""

    networks: np.ndarray
    edges: pd.DataFrame
    sigma0: np.ndarray
    sigma1: np.ndarray
    participants: pd.DataFrame
    has_dropout: np.ndarray
    has_spikes: np.ndarray


def _draw_population(labels_table: pd.DataFrame, atlas_labels: np.ndarray, atlas_affine: np.ndarray,
                     n_subjects: int, rng: np.random.Generator,
                     responder_loading: float = MODEL.responder_loading) -> Population:
    # the draws' order is part of the output: a rerun with the same seed is byte-identical
    networks = _assign_networks(labels_table, rng)
    edges = _choose_edges(atlas_labels, atlas_affine, networks, rng)
    sigma0, sigma1 = population_covariances(networks, edges, responder_loading)
    participants = _participants(n_subjects, rng)
    n_dropout = int(round(MODEL.dropout_fraction * n_subjects))
    n_spikes = int(round(MODEL.spike_fraction * n_subjects))
    has_dropout = np.zeros(n_subjects, bool)
    has_dropout[rng.permutation(n_subjects)[:n_dropout]] = True
    has_spikes = np.zeros(n_subjects, bool)
    has_spikes[rng.permutation(n_subjects)[:n_spikes]] = True
    return Population(networks, edges, sigma0, sigma1, participants, has_dropout, has_spikes)


def population_covariances(networks: np.ndarray, edges: pd.DataFrame,
                           responder_loading: float = MODEL.responder_loading) -> tuple[np.ndarray, np.ndarray]:
    """``Sigma0`` (non-responders) and ``Sigma1`` (responders); both unit-diagonal.

    ``networks`` holds the network (0..K-1) of each region in label order; ``edges``
    the 1-based labels ``region_i``, ``region_j`` of the planted edges; ``responder_loading``
    the responders' extra factor on the responder networks (a weaker one: a weaker FC effect).
    """
    n, k = len(networks), MODEL.n_networks
    loadings = np.zeros((n, k + 2))
    loadings[np.arange(n), networks] = MODEL.network_loading
    loadings[:, k] = MODEL.global_loading

    def covariance(b: np.ndarray) -> np.ndarray:
        sigma = b @ b.T
        return sigma + np.diag(1.0 - np.diag(sigma))  # unique variances: unit diagonal

    sigma0 = covariance(loadings)
    loadings[np.isin(networks, MODEL.responder_networks), k + 1] = responder_loading
    sigma1 = covariance(loadings)
    i = edges["region_i"].to_numpy() - 1
    j = edges["region_j"].to_numpy() - 1
    sigma1[i, j] += MODEL.edge_delta
    sigma1[j, i] += MODEL.edge_delta
    for name, sigma in (("non-responder", sigma0), ("responder", sigma1)):
        if np.linalg.eigvalsh(sigma)[0] <= 0:
            raise RuntimeError(f"the {name} covariance is not positive definite; model constants are inconsistent")
    return sigma0, sigma1


def dynamics_factor_removed(sigma: np.ndarray, networks: np.ndarray) -> np.ndarray:
    """``sigma`` less the dynamics network's factor ``lam**2 a a'`` (``a``: its regions): the part
    simulated as a VAR(1) at ``ar_coef``; the factor is added as its own AR(1), so that every
    ``x_t`` still has covariance ``sigma`` exactly whatever the factor's coefficient."""
    a = (networks == MODEL.dynamics_network).astype(float)
    rest = sigma - MODEL.network_loading ** 2 * np.outer(a, a)
    if np.linalg.eigvalsh(rest)[0] <= 0:
        raise RuntimeError("the covariance less the dynamics factor is not positive definite; model constants are inconsistent")
    return rest


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
        "age": rng.integers(MODEL.age_range[0], MODEL.age_range[1] + 1, size=n),
        "sex": np.repeat(["F", "M"], half)[rng.permutation(n)],
        "response": response[order],
        "drug": np.array(["drugA", "drugB"])[drug[order]],
        "site": np.array(["site1", "site2"])[site[order]],
    })
