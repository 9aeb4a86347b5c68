"""The `fmriflow` command line, run as a user would (a subprocess), checked against nilearn/numpy."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.maskers import NiftiLabelsMasker

from conftest import random_bold


def fmriflow(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fmriflow.cli", *map(str, args)], capture_output=True, text=True, env=env)


def test_parcellate_and_connectivity(tmp_path, a424_img, atlas_dir):
    bold = tmp_path / "bold.nii.gz"
    nib.save(random_bold(a424_img.shape, 15, a424_img.affine, seed=9), bold)
    atlas = atlas_dir / "A424+2mm.nii.gz"
    proc = fmriflow("parcellate", "--bold", bold, "--atlas", atlas, "--out", tmp_path / "ts.tsv")
    assert proc.returncode == 0, proc.stderr
    ts = pd.read_csv(tmp_path / "ts.tsv", sep="\t")
    assert ts.shape == (15, 424) and list(ts.columns) == [str(i) for i in range(1, 425)]
    ref = NiftiLabelsMasker(labels_img=str(atlas), strategy="mean").fit_transform(str(bold))
    np.testing.assert_allclose(ts.to_numpy(), ref, atol=1e-5)
    assert json.loads((tmp_path / "ts.json").read_text())["Provenance"]["Step"] == "parcellate"

    proc = fmriflow("connectivity", "--timeseries", tmp_path / "ts.tsv", "--kind", "pearson", "--out", tmp_path / "fc.tsv")
    assert proc.returncode == 0, proc.stderr
    fc = pd.read_csv(tmp_path / "fc.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(fc.to_numpy(), np.corrcoef(ts.to_numpy(), rowvar=False), atol=1e-7)


def test_tangent_needs_a_reference(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"ts{i}.tsv"
        pd.DataFrame(rng.standard_normal((30, 5)), columns=list("abcde")).to_csv(path, sep="\t", index=False)
        paths.append(path)
    proc = fmriflow("connectivity", "--timeseries", paths[0], "--kind", "tangent", "--out", tmp_path / "t.tsv")
    assert proc.returncode == 1 and "--reference" in proc.stderr
    proc = fmriflow("connectivity", "--timeseries", paths[0], "--kind", "tangent", "--reference", *paths[1:], "--out", tmp_path / "t.tsv")
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "t.tsv", sep="\t", index_col=0).to_numpy()
    assert out.shape == (5, 5) and np.allclose(out, out.T)


def test_bad_bold_is_named(tmp_path, atlas_dir):
    bad = tmp_path / "broken_bold.nii.gz"
    bad.write_bytes(b"not a nifti")
    proc = fmriflow("parcellate", "--bold", bad, "--atlas", atlas_dir / "A424+2mm.nii.gz", "--out", tmp_path / "x.tsv")
    assert proc.returncode != 0 and "broken_bold.nii.gz" in proc.stderr
    assert not (tmp_path / "x.tsv").exists()


def test_fetch_atlas_offline_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, fmriflow.atlas as a; from fmriflow.cli import main;"
        "a.A424_FILES['labels_img'] = a.AtlasFile('A424+2mm.nii.gz', 'http://127.0.0.1:9/x', '0'*64);"
        f"sys.exit(main(['fetch-atlas', '--atlas-cache', r'{tmp_path / 'cache'}']))")],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "FMRIFLOW_ATLAS_DIR" in proc.stderr and "atlas.path" in proc.stderr
