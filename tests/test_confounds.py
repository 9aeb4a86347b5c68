"""fmriflow.confounds: the rigid-body convention, non-steady-state detection, CompCor, against closed forms."""

import numpy as np
import pytest

from fmriflow.confounds import compcor, dct_highpass_basis, dvars, non_steady_state_volumes, rigid_matrix, rigid_parameters


def test_rigid_convention_closed_form():
    c = np.array([10.0, -20.0, 5.0])
    theta = 0.3
    m = rigid_matrix([1.0, 2.0, 3.0, 0.0, 0.0, theta], c)
    # a point 1 mm right of the centre turns counter-clockwise about z, then translates
    p = c + [1.0, 0.0, 0.0]
    np.testing.assert_allclose(m[:3, :3] @ p + m[:3, 3], c + [np.cos(theta), np.sin(theta), 0.0] + [1.0, 2.0, 3.0])
    # rot_x turns y towards z
    m = rigid_matrix([0, 0, 0, theta, 0, 0], c)
    np.testing.assert_allclose(m[:3, :3] @ (c + [0, 1, 0]) + m[:3, 3], c + [0, np.cos(theta), np.sin(theta)])
    # composition order: R = Rz Ry Rx
    rx, ry, rz = 0.1, -0.2, 0.3
    Rx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    Ry = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    Rz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    np.testing.assert_allclose(rigid_matrix([0, 0, 0, rx, ry, rz], c)[:3, :3], Rz @ Ry @ Rx, atol=1e-12)
    params = np.array([0.5, -1.5, 2.0, 0.02, -0.03, 0.04])
    np.testing.assert_allclose(rigid_parameters(rigid_matrix(params, c), c), params, atol=1e-12)


def test_non_steady_state_detection():
    rng = np.random.default_rng(0)
    gs = 1000 + rng.standard_normal(60)
    assert non_steady_state_volumes(gs) == 0
    gs[:3] += [300, 120, 40]
    assert non_steady_state_volumes(gs) == 3
    gs[10] += 500  # a later spike is motion, not saturation
    assert non_steady_state_volumes(gs) == 3


def test_compcor_is_the_leading_svd_of_filtered_scaled_voxels():
    rng = np.random.default_rng(1)
    n = 80
    basis = dct_highpass_basis(n, 2.0)
    y = rng.standard_normal((n, 30)) + np.outer(np.sin(np.arange(n) / 3), rng.standard_normal(30)) * 3
    comps, explained = compcor(y, basis, 3)
    design = np.column_stack([np.ones(n), basis])
    resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    z = resid / resid.std(0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(u[:, :3] * comps, axis=0)), 1.0, atol=1e-8)
    np.testing.assert_allclose(explained, (s**2 / np.sum(s**2))[:3])


def test_dvars_closed_form():
    rng = np.random.default_rng(2)
    y = 500 + rng.standard_normal((40, 200))
    d, std = dvars(y)
    scale = 1000 / np.median(y.mean(0))
    assert np.isnan(d[0]) and np.isnan(std[0])
    np.testing.assert_allclose(d[1:], np.sqrt(np.mean((np.diff(y, axis=0) * scale) ** 2, axis=1)))
    # white noise: DVARS is about sqrt(2) times the voxel SD, so std_dvars is about 1
    assert np.median(std[1:]) == pytest.approx(1.0, abs=0.1)
