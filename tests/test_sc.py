"""Structural connectomes (fmriflow.sc): tck2connectome text and QSIRecon .mat reading, the checks
(each error names the file), the transforms against their formulas, subject matching, and the demo's
simulated connectomes (symmetric counts, denser within networks, the responder effect where planted)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmriflow.errors import InputError
from fmriflow.io import read_json, read_tsv, write_json
from fmriflow.sc.connectome import check_connectome, match_subjects, read_connectome, transform_connectome
from fmriflow.sc.demo import SCModel, expected_counts, write_demo_connectomes

R = 6


def _counts(seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).poisson(20, size=(R, R)).astype(float)
    a = np.triu(a, 1)
    return a + a.T


def test_tck2connectome_upper_triangle_is_mirrored(tmp_path):
    counts = _counts()
    path = tmp_path / "sub-01_connectome.csv"
    np.savetxt(path, np.triu(counts), delimiter=",", fmt="%d")
    matrix, info = read_connectome(path, region_ids=range(1, R + 1))
    np.testing.assert_array_equal(matrix, counts)
    assert info.mirrored_upper_triangle and info.format == "tck2connectome text"
    # whitespace-delimited (.txt), already symmetric: read as is
    np.savetxt(tmp_path / "sym.txt", counts, fmt="%d")
    matrix, info = read_connectome(tmp_path / "sym.txt")
    np.testing.assert_array_equal(matrix, counts)
    assert not info.mirrored_upper_triangle


def test_qsirecon_mat_by_atlas_and_measure(tmp_path):
    from scipy.io import savemat

    counts = _counts()
    path = tmp_path / "sub-01_connectivity.mat"
    savemat(path, {"atlas_A424_sift_invnodevol_radius2_count_connectivity": counts * 0.5,
                   "atlas_A424_radius2_count_connectivity": counts, "atlas_A424_region_ids": np.arange(1, R + 1)})
    matrix, info = read_connectome(path, "A424", "radius2_count", region_ids=range(1, R + 1))
    np.testing.assert_array_equal(matrix, counts)
    assert info.key == "atlas_A424_radius2_count_connectivity"
    with pytest.raises(InputError, match="0 matrices match atlas 'A424' and measure 'fa'.*keys there"):
        read_connectome(path, "A424", "fa")
    with pytest.raises(InputError, match="not the atlas's order"):
        read_connectome(path, "A424", "radius2_count", region_ids=[2, 1, 3, 4, 5, 6])


@pytest.mark.parametrize("matrix, n, match", [
    (np.zeros((3, 4)), None, "square matrix; got shape \\(3, 4\\)"),
    (np.zeros((5, 5)), 6, "atlas has 6 regions but the connectome is 5 x 5"),
    (np.diag([1.0, np.nan, 1.0]), None, "1 non-finite value\\(s\\), the first at row 1, column 1"),
    (-np.ones((3, 3)), None, "non-negative"),
    (np.array([[0, 1.0], [2.0, 0]]), None, "not symmetric"),
])
def test_checks_name_the_file(matrix, n, match):
    with pytest.raises(InputError, match=match) as err:
        check_connectome(matrix, "sub-01_conn.csv", n_regions=n)
    assert err.value.path == "sub-01_conn.csv"


def test_transforms_against_their_formulas():
    counts = _counts()
    counts[0, 1] = counts[1, 0] = 0.0
    volumes = np.arange(1.0, R + 1) * 100
    out = transform_connectome(counts, "log10_count_over_volume", volumes)
    for i in range(R):
        for j in range(R):
            want = 0.0 if i == j or counts[i, j] == 0 else np.log10(counts[i, j] / ((volumes[i] + volumes[j]) / 2))
            assert out[i, j] == pytest.approx(want)
    assert (out < 0).any()  # weak edges are negative: the signed input
    np.testing.assert_allclose(transform_connectome(counts, "log1p"), np.log1p(counts) * (1 - np.eye(R)))
    with pytest.raises(ValueError, match="'transform' must be one of"):
        transform_connectome(counts, "sqrt")


def test_match_subjects(tmp_path):
    paths = [tmp_path / "sub-01_x.csv", tmp_path / "sub-03_x.csv"]
    found, missing = match_subjects(paths, ["01", "02", "03"])
    assert found == {"01": paths[0], "03": paths[1]} and missing == ["02"]
    with pytest.raises(InputError, match="subject 01 has 2 connectomes"):
        match_subjects([*paths, tmp_path / "sub-01_y.csv"], ["01", "03"])
    with pytest.raises(InputError, match="not in the cohort"):
        match_subjects(paths, ["01"])


def test_demo_connectomes(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    regions = [{"index": k + 1, "name": f"r{k}", "network": k % 5, "x": float(x), "y": float(y), "z": float(z)}
               for k, (x, y, z) in enumerate(rng.uniform(-50, 50, (n, 3)))]
    subjects = {f"sub-{s:02d}": {"response": s % 2} for s in range(1, 9)}
    write_json(tmp_path / "gt.json", {"regions": regions, "subjects": subjects})
    paths = write_demo_connectomes(tmp_path / "qsirecon", tmp_path / "gt.json", seed=3)
    assert [p.name[:6] for p in paths] == [f"sub-{s:02d}" for s in range(1, 9)]
    mats = np.stack([read_connectome(p, region_ids=range(1, n + 1))[0] for p in paths])
    volumes = read_tsv(tmp_path / "qsirecon" / "seg-A424_desc-volume_regions.tsv")["volume_mm3"].to_numpy()
    signed = transform_connectome(mats[0], "log10_count_over_volume", volumes)
    assert (signed < 0).any() and np.isfinite(signed).all()
    assert read_json(tmp_path / "qsirecon" / "dataset_description.json")["DatasetType"] == "derivative"
    # the expected counts follow the model's formula, the subject's network densities included
    xyz = pd.DataFrame(regions)[["x", "y", "z"]].to_numpy()
    net = np.arange(n) % 5
    model = SCModel()
    d = np.linalg.norm(xyz[3] - xyz[8])  # both network 3, in the effect networks
    density = np.array([1.0, 1.0, 1.0, 1.21, 1.0])
    assert expected_counts(xyz, net, True, 1.1, density=density)[3, 8] == pytest.approx(
        model.scale * 1.1 * np.exp(-d / model.length_mm) * (1 + model.within_boost) * 1.21 * (1 + model.effect))
    d = np.linalg.norm(xyz[3] - xyz[4])  # networks 3 and 4: sqrt(u_3 u_4), no within-network boost
    assert expected_counts(xyz, net, False, density=density)[3, 4] == pytest.approx(
        model.scale * np.exp(-d / model.length_mm) * 1.1)
    truth = read_json(tmp_path / "qsirecon" / "ground_truth_sc.json")
    assert truth["subjects"]["sub-01"]["responder"] is True


def test_demo_connectome_effect_size(tmp_path):
    """Without between-subject spread, responders' streamlines in the effect block rise by 1 + effect
    relative to the rest of the matrix (Poisson noise aside); with the default spread, by about as
    much on average, on other networks than the fMRI effect's."""
    from fmriflow.demo.model import MODEL as DEMO_MODEL
    from fmriflow.sc.demo import simulate_counts

    assert not set(SCModel().effect_networks) & {*DEMO_MODEL.responder_networks, DEMO_MODEL.dynamics_network}
    rng = np.random.default_rng(1)
    n = 60
    xyz, net = rng.uniform(-50, 50, (n, 3)), np.arange(n) % 5
    responders = [s % 2 == 1 for s in range(40)]
    eff = np.isin(net, SCModel().effect_networks)
    block = (eff[:, None] & eff[None, :]) & ~np.eye(n, dtype=bool)
    rest = ~(eff[:, None] | eff[None, :])
    for model, tolerance in ((SCModel(network_sd=0.0), 0.02), (SCModel(), 0.1)):
        counts, scales = simulate_counts(xyz, net, responders, seed=5, model=model)
        per_subject = counts[:, block].sum(1) / counts[:, rest].sum(1)  # scale cancels
        ratio = per_subject[1::2].mean() / per_subject[0::2].mean()
        assert ratio == pytest.approx(1 + model.effect, abs=tolerance)
    # the default spread leaves the groups overlapping a little on this one feature: not a clean step
    log_ratio = np.log(per_subject)
    gap = log_ratio[1::2].min() - log_ratio[0::2].max()
    assert gap < 0


def test_demo_spread_per_pair_of_networks():
    """``block_sd``: each pair of networks' streamlines move by a subject's own log-normal factor of that SD
    (against the closed form), and 0 (the default) draws nothing, so the default demo's counts are unchanged."""
    from fmriflow.sc.demo import simulate_counts

    rng = np.random.default_rng(2)
    n, k = 60, 4
    xyz, net = rng.uniform(-50, 50, (n, 3)), np.arange(n) % k
    pairs = np.array([[1.0, 2.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    plain = expected_counts(xyz, net, False)
    np.testing.assert_allclose(expected_counts(xyz, net, False, pair_density=pairs),
                               plain * pairs[net[:, None], net[None, :]])
    responders = [False] * 30
    default, _ = simulate_counts(xyz, net, responders, seed=4)
    zero, _ = simulate_counts(xyz, net, responders, seed=4, model=SCModel(block_sd=0.0))
    np.testing.assert_array_equal(zero, default)
    quiet = dict(network_sd=0.0, subject_scale_range=(1.0, 1.0), scale=1e5)  # Poisson noise negligible
    counts, _ = simulate_counts(xyz, net, responders, seed=4, model=SCModel(block_sd=0.3, **quiet))
    i, j = np.triu_indices(n, 1)
    spread = []
    for a in range(k):
        for b in range(a, k):
            edges = ((net[i] == a) & (net[j] == b)) | ((net[i] == b) & (net[j] == a))
            ratio = counts[:, i[edges], j[edges]].sum(1) / plain[i[edges], j[edges]].sum()
            spread.append(np.log(ratio).std(ddof=1))
    assert np.mean(spread) == pytest.approx(0.3, abs=0.05)


def test_prepare_connectome_records_the_transform(tmp_path):
    counts = _counts()
    source = tmp_path / "sub-01_connectome.csv"
    np.savetxt(source, np.triu(counts), delimiter=",", fmt="%d")
    labels = tmp_path / "atlas.tsv"
    pd.DataFrame({"index": range(1, R + 1), "name": [f"r{i}" for i in range(R)]}).to_csv(labels, sep="\t", index=False)
    volumes = tmp_path / "volumes.tsv"
    pd.DataFrame({"volume_mm3": np.full(R, 100.0)}).to_csv(volumes, sep="\t", index=False)
    from fmriflow.sc.connectome import prepare_connectome

    out = tmp_path / "sub-01_desc-log10_connectome.tsv"
    sidecar = read_json(prepare_connectome(source, out, labels, volumes=volumes))
    table = read_tsv(out)
    assert list(table.columns) == [f"r{i}" for i in range(R)]
    with np.errstate(divide="ignore"):
        want = np.where(counts > 0, np.log10(counts / 100.0), 0.0)
    np.testing.assert_allclose(table.to_numpy(), want * (1 - np.eye(R)), atol=1e-8)
    assert sidecar["Connectome"]["transform"] == "log10_count_over_volume"
    assert sidecar["Connectome"]["mirrored_upper_triangle"] is True
    assert sidecar["Provenance"]["Step"] == "sc"
    with pytest.raises(InputError, match="atlas has 7 regions but the connectome is 6 x 6"):
        pd.DataFrame({"index": range(1, R + 2), "name": [f"r{i}" for i in range(R + 1)]}).to_csv(labels, sep="\t", index=False)
        prepare_connectome(source, out, labels, volumes=volumes)
