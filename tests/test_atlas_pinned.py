"""Pinned third-party atlases (fmriflow.atlas_pinned): sources, sha256, the offline error, the 450-region
order, and the parcellation through the pinned path against nilearn.

The atlas files here are test doubles: small label images on the A424 (demo) grid, with tables in
the releases' formats, written by the tests; the pins are monkeypatched to their sha256. The real
files are checked by benchmarks/check_pinned_atlases.py when given a folder holding them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from nilearn.maskers import NiftiLabelsMasker

from conftest import REPO, random_bold
from fmriflow import atlas, atlas_pinned
from fmriflow.errors import InputError

N_SUB, N_CTX = atlas_pinned.TIAN_S3_N_REGIONS, atlas_pinned.SCHAEFER_N_REGIONS
# the doubles' region names (release formats): Tian's '-rh'/'-lh', CBIG's '7Networks_LH_..' / '17Networks_RH_..'
TIAN_NAMES = [f"SUB{i}-{'rh' if i <= 25 else 'lh'}" for i in range(1, N_SUB + 1)]
CTX7_NAMES = [f"7Networks_{'LH' if i <= 200 else 'RH'}_Net_{i}" for i in range(1, N_CTX + 1)]
CTX17_NAMES = [f"17Networks_{'LH' if j <= 200 else 'RH'}_Net17_{j}" for j in range(1, N_CTX + 1)]


def _dlabel(path, cortex, subcortex, names):
    """A test-double CIFTI dense label file: ``cortex`` on left-cortex vertices, ``subcortex`` on voxels of one
    structure (Tian's release: Schaefer on the surface, Tian S3 in the volume), label names from ``names``."""
    from nibabel.cifti2 import cifti2_axes as axes

    mask = np.zeros((4, 4, 4), bool)
    mask.flat[:len(subcortex)] = True
    model = (axes.BrainModelAxis.from_surface(np.arange(len(cortex)), len(cortex), "CortexLeft")
             + axes.BrainModelAxis.from_mask(mask, affine=np.eye(4), name="thalamus_left"))
    table = {0: ("???", (1.0, 1.0, 1.0, 0.0)), **{k: (n, (0.5, 0.5, 0.5, 1.0)) for k, n in names.items()}}
    header = nib.cifti2.Cifti2Header.from_axes((axes.LabelAxis(["parcels"], [table]), model))
    data = np.concatenate([cortex, subcortex]).astype(np.float32)[None, :]
    nib.Cifti2Image(data, header).to_filename(str(path))


def _surfaces(folder, perm, tian_names, ctx7_names, ctx17_names, *, merge=False, split=False):
    """The two CIFTI doubles: 7-network parcel k (labels 51..450, 3 vertices each, and medial-wall zeros) is
    17-network parcel perm[k - 1]; ``merge``: parcels 1 and 2 both become perm[0]; ``split``: one vertex of
    parcel 3 becomes perm[3] (neither is a bijection)."""
    seven = np.concatenate([np.repeat(np.arange(1, N_CTX + 1), 3), np.zeros(7, int)]) + N_SUB * (np.arange(1207) < 1200)
    seventeen = np.where(seven > N_SUB, perm[np.clip(seven - N_SUB, 1, None) - 1] + N_SUB, 0)
    if merge:
        seventeen[seven == N_SUB + 2] = perm[0] + N_SUB
    if split:
        seventeen[np.flatnonzero(seven == N_SUB + 3)[0]] = perm[3] + N_SUB
    sub = np.arange(1, N_SUB + 1)
    tian = dict(enumerate(tian_names, start=1))
    _dlabel(folder / atlas_pinned.SCHAEFER400_7_TIAN_S3_SURFACE.name, seven, sub,
            {**tian, **{k + N_SUB: n for k, n in enumerate(ctx7_names, start=1)}})
    _dlabel(folder / atlas_pinned.SCHAEFER400_17_TIAN_S3_SURFACE.name, seventeen, sub,
            {**tian, **{k + N_SUB: n for k, n in enumerate(ctx17_names, start=1)}})


def _blocks(shape, n, z0, seed):
    """A test-double label image: labels 1..n, each a 2x2x2 block at shuffled places in slab z0..z0+4."""
    data = np.zeros(shape, np.int16)
    rng = np.random.default_rng(seed)
    spots = [(i, j) for i in range(20, 70, 2) for j in range(20, 90, 2)]
    for label, k in enumerate(rng.permutation(len(spots))[:n], start=1):
        i, j = spots[k]
        data[i:i + 2, j:j + 2, z0:z0 + 2] = label
    return data


@pytest.fixture(scope="module")
def doubles(tmp_path_factory, a424_img):
    """Test doubles of the pinned files (release names and formats) and the pieces they are made from."""
    folder = tmp_path_factory.mktemp("pinned_doubles")
    affine = a424_img.affine
    tian = _blocks(a424_img.shape, N_SUB, 30, seed=1)  # disjoint slabs: cortex and subcortex do not overlap
    schaefer = _blocks(a424_img.shape, N_CTX, 50, seed=2)
    combined = np.where(tian > 0, tian, np.where(schaefer > 0, schaefer + N_SUB, 0)).astype(np.float32)
    nib.save(nib.Nifti1Image(tian.astype(np.float32), affine), folder / atlas_pinned.TIAN_S3_IMAGE.name)
    nib.save(nib.Nifti1Image(combined, affine), folder / atlas_pinned.SCHAEFER400_7_TIAN_S3_IMAGE.name)
    tian_names = TIAN_NAMES
    (folder / atlas_pinned.TIAN_S3_LABELS.name).write_text("\n".join(tian_names))  # the release: no final newline
    cog = np.round(np.random.default_rng(3).uniform(-30, 30, (N_SUB, 3)), 1)
    np.savetxt(folder / atlas_pinned.TIAN_S3_CENTROIDS.name, cog, fmt="%.1f", delimiter="\t")
    ctx_names = CTX7_NAMES
    pd.DataFrame({"index": range(1, N_CTX + 1), "name": ctx_names, "color": "#000000"}).to_csv(
        folder / atlas_pinned.SCHAEFER400_7_NAMES.name, sep="\t", index=False)
    perm = np.random.default_rng(4).permutation(N_CTX) + 1  # 7-network parcel k is 17-network parcel perm[k - 1]
    ctx17_names = CTX17_NAMES
    _surfaces(folder, perm, tian_names, ctx_names, ctx17_names)
    return {"dir": folder, "tian": tian, "schaefer": schaefer, "tian_names": tian_names, "cog": cog,
            "ctx_names": ctx_names, "affine": affine, "perm": perm, "ctx17_names": ctx17_names}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin_to_doubles(monkeypatch, folder: Path) -> None:
    """Every pin pointed at its test double's sha256 in ``folder`` (addresses unreachable: nothing is downloaded)."""
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    for name, spec in atlas_pinned.PINNED_ATLASES.items():
        files = {key: atlas.AtlasFile(f.name, f"http://127.0.0.1:9/{f.name}", _sha(folder / f.name))
                 for key, f in spec.files.items()}
        monkeypatch.setitem(atlas_pinned.PINNED_ATLASES, name, dataclasses.replace(spec, files=files))


@pytest.fixture
def pinned_to_doubles(doubles, monkeypatch):
    pin_to_doubles(monkeypatch, doubles["dir"])
    return doubles


@pytest.mark.parametrize("name", sorted(atlas_pinned.PINNED_ATLASES))
def test_local_dir_verified_then_cached(pinned_to_doubles, tmp_path, name):
    folder = pinned_to_doubles["dir"]
    spec, files = atlas_pinned.pinned_atlas_files(name, tmp_path / "cache", folder, download=False)
    assert set(files) == set(spec.files) | ({"image"} if spec.derive else set())  # a derived atlas adds its image
    for key, path in ((k, files[k]) for k in spec.files):
        assert path.parent == tmp_path / "cache" and path.read_bytes() == (folder / spec.files[key].name).read_bytes()
    # the cache alone serves the next call (offline, no folder given)
    assert atlas_pinned.pinned_atlas_files(name, tmp_path / "cache", None, download=False)[1] == files


def test_environment_variable_is_honoured(pinned_to_doubles, tmp_path, monkeypatch):
    monkeypatch.setenv(atlas.ATLAS_DIR_ENV, str(pinned_to_doubles["dir"]))
    _, files = atlas_pinned.pinned_atlas_files("TianS3", tmp_path / "cache", download=False)
    assert files["image"] == tmp_path / "cache" / atlas_pinned.TIAN_S3_IMAGE.name and files["image"].is_file()


def test_wrong_sha256_refused_naming_file_and_both_hashes(pinned_to_doubles, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pinned_to_doubles["dir"], bad)
    path = bad / atlas_pinned.TIAN_S3_LABELS.name
    path.write_text(path.read_text().replace("SUB1-rh", "SUB1-lh"))
    pinned = atlas_pinned.PINNED_ATLASES["TianS3"].files["labels"].sha256
    with pytest.raises(InputError) as err:
        atlas_pinned.pinned_atlas_files("TianS3", tmp_path / "cache", bad, download=False)
    message = str(err.value)
    assert str(path) in message and _sha(path) in message and pinned in message and _sha(path) != pinned
    assert not (tmp_path / "cache" / path.name).exists()


def test_file_missing_from_the_folder_names_its_address(pinned_to_doubles, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(pinned_to_doubles["dir"], partial)
    (partial / atlas_pinned.TIAN_S3_CENTROIDS.name).unlink()
    with pytest.raises(InputError, match=r"Tian_Subcortex_S3_3T_COG.txt not found .*its pinned address is http"):
        atlas_pinned.pinned_atlas_files("TianS3", tmp_path / "cache", partial, download=False)


@pytest.mark.parametrize("name", sorted(atlas_pinned.PINNED_ATLASES))
def test_offline_error_names_the_options(tmp_path, monkeypatch, name):
    """The real pins: the message names the variable, the config key, every file, address and sha256."""
    monkeypatch.delenv(atlas.ATLAS_DIR_ENV, raising=False)
    with pytest.raises(atlas.AtlasUnavailableError) as err:
        atlas_pinned.pinned_atlas_files(name, tmp_path / "empty-cache", download=False)
    message = str(err.value)
    assert "FMRIFLOW_ATLAS_DIR" in message and "atlas.path" in message and name in message
    for spec in atlas_pinned.PINNED_ATLASES[name].files.values():
        assert spec.name in message and spec.url in message and spec.sha256 in message
        assert spec.url.startswith("https://raw.githubusercontent.com/")
        commit = spec.url.split("/")[5]
        assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)  # a fixed commit, not a branch


def test_failed_download_leaves_nothing(pinned_to_doubles, tmp_path):
    with pytest.raises(atlas.AtlasUnavailableError, match="TianS3 atlas file .* download failed.*FMRIFLOW_ATLAS_DIR"):
        atlas_pinned.pinned_atlas_files("TianS3", tmp_path / "cache")  # the doubles' addresses refuse connections
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_name_lists_the_allowed():
    with pytest.raises(InputError, match=r"atlas.pinned: unknown pinned atlas 'Schaefer400'.*TianS3"):
        atlas_pinned.pinned_atlas_files("Schaefer400", "unused")


def test_schema_allows_exactly_the_registry():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    pinned = schema["properties"]["atlas"]["properties"]["pinned"]
    assert sorted(pinned["items"]["enum"]) == sorted(atlas_pinned.PINNED_ATLASES) and pinned["default"] == []


def _centroid(data, affine, label):
    ijk = np.argwhere(data == label).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_combined_order_against_an_independent_construction(pinned_to_doubles, tmp_path):
    """Brain-JEPA's 450 regions: the 50 Tian S3 regions, then the 400 Schaefer ones (its loader
    concatenates the subcortical series before the cortical); names and centroids follow."""
    d = pinned_to_doubles
    spec, files = atlas_pinned.pinned_atlas_files("Schaefer400N7TianS3", tmp_path / "cache", d["dir"], download=False)
    table = atlas_pinned.pinned_atlas_table(spec, files)
    assert table["index"].tolist() == list(range(1, 451))
    assert table["name"].tolist() == d["tian_names"] + d["ctx_names"]
    assert table["group"].tolist() == ["subcortex"] * 50 + ["cortex"] * 400
    assert table["hemisphere"].tolist() == ["R"] * 25 + ["L"] * 25 + ["L"] * 200 + ["R"] * 200
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy()[:50], d["cog"])
    for k in (0, 123, 399):  # the cortical centroids: the mean voxel of the Schaefer double's region
        np.testing.assert_allclose(table.loc[50 + k, ["x", "y", "z"]].to_numpy(float),
                                   _centroid(d["schaefer"], d["affine"], k + 1), atol=1e-6)


def test_table_refuses_an_image_without_every_label(pinned_to_doubles, tmp_path):
    d = pinned_to_doubles
    short = tmp_path / "short"
    shutil.copytree(d["dir"], short)
    tian = d["tian"].astype(np.float32)
    tian[tian == 7] = 0
    image = short / atlas_pinned.TIAN_S3_IMAGE.name
    nib.save(nib.Nifti1Image(tian, d["affine"]), image)
    spec = atlas_pinned.PINNED_ATLASES["TianS3"]
    files = {k: short / f.name for k, f in spec.files.items()}
    with pytest.raises(InputError, match="expected labels 1..50 in the image.*49 labels"):
        atlas_pinned.pinned_atlas_table(spec, files)


def _nilearn_mean(bold, labels):
    masker = NiftiLabelsMasker(labels_img=labels, strategy="mean", keep_masked_labels=False)
    values = masker.fit_transform(bold)
    ids = masker.region_ids_  # column position -> label value
    return pd.DataFrame(values, columns=[int(ids[i]) for i in range(values.shape[1])])


def _parcellated_by_pinned(name: str, d: dict, tmp_path: Path, atlas_dir: Path, frames: int, seed: int):
    """A random BOLD on the doubles' grid parcellated by A424 and the pinned atlas ``name`` in one pass
    (the pipeline's steps): the BOLD image, the pinned atlas's series and its (image, labels) paths."""
    from fmriflow.parcellate_step import parcellate_step
    from fmriflow.steps import atlas_step, pinned_atlas_step

    bold = random_bold(d["tian"].shape, frames, d["affine"], seed=seed)
    nib.save(bold, tmp_path / "bold.nii.gz")
    a424 = (tmp_path / "a424_dseg.nii.gz", tmp_path / "a424_labels.tsv")
    atlas_step(str(a424[0]), str(a424[1]), str(tmp_path / "a424-cache"), str(atlas_dir))
    out = (tmp_path / f"{name}_dseg.nii.gz", tmp_path / f"{name}_labels.tsv")
    pinned_atlas_step(name, str(a424[0]), str(out[0]), str(out[1]), str(tmp_path / "cache"), str(d["dir"]))
    series = [tmp_path / "a424_ts.tsv", tmp_path / f"{name}_ts.tsv"]
    parcellate_step(str(tmp_path / "bold.nii.gz"), None, [tuple(map(str, a424)), tuple(map(str, out))],
                    [str(s) for s in series], [None, None], strategy="mean", min_coverage=0.0)
    return bold, pd.read_csv(series[1], sep="\t"), out


def test_parcellation_through_the_pinned_path_equals_nilearn(pinned_to_doubles, atlas_dir, tmp_path):
    """pinned_atlas_step then one parcellate_step pass (A424 and the 450 regions from one read):
    the 450 columns equal nilearn's NiftiLabelsMasker (mean) on the Tian double then on the Schaefer
    double, concatenated in that order, as Brain-JEPA's loader builds its input."""
    d = pinned_to_doubles
    bold, ours, out = _parcellated_by_pinned("Schaefer400N7TianS3", d, tmp_path, atlas_dir, frames=8, seed=5)
    assert list(ours.columns) == d["tian_names"] + d["ctx_names"]
    sub = _nilearn_mean(bold, nib.Nifti1Image(d["tian"], d["affine"]))
    ctx = _nilearn_mean(bold, nib.Nifti1Image(d["schaefer"], d["affine"]))
    reference = np.hstack([sub[list(range(1, 51))].to_numpy(), ctx[list(range(1, 401))].to_numpy()])
    np.testing.assert_allclose(ours.to_numpy(), reference, atol=1e-4, rtol=0)
    sidecar = yaml.safe_load(out[1].with_suffix(".json").read_text())
    image = atlas_pinned.SCHAEFER400_7_TIAN_S3_IMAGE.name
    assert sidecar["Name"] == "Schaefer400N7TianS3" and sidecar["Source"][image]["sha256"] == _sha(d["dir"] / image)


def test_17_network_atlas_is_the_7_network_image_relabelled(pinned_to_doubles, tmp_path):
    """Schaefer400N17TianS3: every voxel of 7-network parcel k carries 17-network label perm[k - 1] + 50 (the
    correspondence the CIFTI doubles were written with), Tian S3 and background untouched; names from the
    17-network CIFTI, in its order; centroids of the voxels the label now holds."""
    d = pinned_to_doubles
    spec, files = atlas_pinned.pinned_atlas_files("Schaefer400N17TianS3", tmp_path / "cache", d["dir"], download=False)
    expected = np.where(d["tian"] > 0, d["tian"], np.where(d["schaefer"] > 0, d["perm"][d["schaefer"] - 1] + N_SUB, 0))
    derived = nib.load(files["image"])
    np.testing.assert_array_equal(np.asarray(derived.dataobj), expected)
    np.testing.assert_array_equal(derived.affine, d["affine"])
    table = atlas_pinned.pinned_atlas_table(spec, files)
    assert table["name"].tolist() == d["tian_names"] + d["ctx17_names"]
    assert table["hemisphere"].tolist()[N_SUB:] == ["L"] * 200 + ["R"] * 200
    for j in (1, 77, 400):  # 17-network parcel j is the 7-network parcel k with perm[k - 1] == j
        k = int(np.flatnonzero(d["perm"] == j)[0]) + 1
        np.testing.assert_allclose(table.loc[N_SUB + j - 1, ["x", "y", "z"]].to_numpy(float),
                                   _centroid(d["schaefer"], d["affine"], k), atol=1e-6)
    again = atlas_pinned.pinned_atlas_files("Schaefer400N17TianS3", tmp_path / "cache2", d["dir"], download=False)[1]
    assert _sha(again["image"]) == _sha(files["image"])  # the derived file is a function of the pinned bytes


@pytest.mark.parametrize("how", ["merge", "split"])
def test_a_correspondence_that_is_not_one_to_one_is_refused(doubles, tmp_path, how):
    from fmriflow.atlas_schaefer17 import correspondence

    d = doubles
    _surfaces(tmp_path, d["perm"], d["tian_names"], d["ctx_names"], d["ctx17_names"], **{how: True})
    seven = tmp_path / atlas_pinned.SCHAEFER400_7_TIAN_S3_SURFACE.name
    seventeen = tmp_path / atlas_pinned.SCHAEFER400_17_TIAN_S3_SURFACE.name
    with pytest.raises(InputError, match="not one-to-one") as err:
        correspondence(seven, seventeen)
    assert str(seven) in str(err.value) and str(seventeen) in str(err.value)
    # the doubles as written are one-to-one: the map read back is the one they were made with
    np.testing.assert_array_equal(correspondence(d["dir"] / seven.name, d["dir"] / seventeen.name), d["perm"])


def test_17_network_parcellation_is_the_7_network_columns_reordered(pinned_to_doubles, atlas_dir, tmp_path):
    """Through pinned_atlas_step and parcellate_step: column 50 + j of Schaefer400N17TianS3 is nilearn's mean of
    the Schaefer double's region k with perm[k - 1] == j; the Tian columns come first, unchanged."""
    d = pinned_to_doubles
    bold, ours, out = _parcellated_by_pinned("Schaefer400N17TianS3", d, tmp_path, atlas_dir, frames=6, seed=6)
    assert list(ours.columns) == d["tian_names"] + d["ctx17_names"]
    sub = _nilearn_mean(bold, nib.Nifti1Image(d["tian"], d["affine"]))
    ctx = _nilearn_mean(bold, nib.Nifti1Image(d["schaefer"], d["affine"]))
    inverse = np.argsort(d["perm"]) + 1  # the 7-network parcel of each 17-network number
    reference = np.hstack([sub[list(range(1, 51))].to_numpy(), ctx[inverse.tolist()].to_numpy()])
    np.testing.assert_allclose(ours.to_numpy(), reference, atol=1e-4, rtol=0)


# the Tian release's and TemplateFlow's files the three atlases pin, each once (read off the Sources table of
# docs/atlases.md): 3 Tian S3 files, the combined 7-network volume, TemplateFlow's table, 2 CIFTI label files
N_SOURCE_FILES = 7


def _serve_doubles(monkeypatch, folder: Path) -> list[str]:
    """Downloads answered from the doubles' folder (by the address's last part); the addresses asked, in order."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return open(folder / url.rsplit("/", 1)[1], "rb")

    monkeypatch.setattr(atlas.urllib.request, "urlopen", urlopen)
    return asked


def test_atlases_sharing_a_source_file_fetch_and_store_it_once(pinned_to_doubles, atlas_dir, tmp_path, monkeypatch):
    """The three atlases through pinned_atlas_step into one cache (atlas.pinned_cache_dir), downloading: every
    distinct source file is asked for once and stored once (one inode each), the shared Tian files are not
    rewritten by the later atlases, and every atlas's sidecar names the same cached copy."""
    from fmriflow.atlas_schaefer17 import DERIVED_IMAGE
    from fmriflow.steps import pinned_atlas_step

    asked = _serve_doubles(monkeypatch, pinned_to_doubles["dir"])
    cache = tmp_path / "cache"
    pins = {f.name: f for spec in atlas_pinned.PINNED_ATLASES.values() for f in spec.files.values()}
    assert len(pins) == N_SOURCE_FILES
    inode = {}
    for name in ("TianS3", "Schaefer400N7TianS3", "Schaefer400N17TianS3"):  # TianS3 first: the others reuse its files
        pinned_atlas_step(name, str(atlas_dir / "A424+2mm.nii.gz"), str(tmp_path / f"{name}_dseg.nii.gz"),
                          str(tmp_path / f"{name}_labels.tsv"), str(cache))
        inode.setdefault(name, (cache / atlas_pinned.TIAN_S3_LABELS.name).stat().st_ino)
    assert sorted(asked) == sorted(f.url for f in pins.values())  # each address once
    stored = sorted(cache.iterdir())
    assert [p.name for p in stored] == sorted([*pins, DERIVED_IMAGE]) and all(p.is_file() for p in stored)
    assert len({p.stat().st_ino for p in stored}) == len(stored) == N_SOURCE_FILES + 1
    assert len(set(inode.values())) == 1  # the labels file TianS3 fetched was kept, not written again
    assert all(_sha(p) == pins[p.name].sha256 for p in stored if p.name in pins)
    recorded = set()
    for name in ("TianS3", "Schaefer400N7TianS3", "Schaefer400N17TianS3"):
        inputs = yaml.safe_load((tmp_path / f"{name}_labels.json").read_text())["Provenance"]["Inputs"]
        recorded |= {i["path"] for i in inputs if Path(i["path"]).name == atlas_pinned.TIAN_S3_LABELS.name}
    assert recorded == {str(cache / atlas_pinned.TIAN_S3_LABELS.name)}


def test_a_corrupted_cached_file_is_named_by_its_sha256(pinned_to_doubles, tmp_path, monkeypatch):
    """A cached Tian file damaged in place (same size, one byte changed): every atlas sharing it refuses it,
    naming the cached path, its sha256 and the pinned one, whether downloads are on or off; it is not replaced
    behind the user's back. A verified copy from atlas.path mends it."""
    folder, cache = pinned_to_doubles["dir"], tmp_path / "cache"
    for name in ("TianS3", "Schaefer400N7TianS3"):
        atlas_pinned.pinned_atlas_files(name, cache, folder, download=False)
    cached = cache / atlas_pinned.TIAN_S3_CENTROIDS.name
    good = cached.read_bytes()
    bad = good.replace(b"\t", b" ", 1)
    assert len(bad) == len(good) and bad != good
    cached.write_bytes(bad)
    actual, pinned = hashlib.sha256(bad).hexdigest(), hashlib.sha256(good).hexdigest()
    asked = _serve_doubles(monkeypatch, folder)
    for name, download in (("TianS3", False), ("Schaefer400N7TianS3", False), ("Schaefer400N7TianS3", True)):
        with pytest.raises(InputError) as err:
            atlas_pinned.pinned_atlas_files(name, cache, None, download=download)
        message = str(err.value)
        assert str(cached) in message and actual in message and pinned in message and "delete it" in message
    assert cached.read_bytes() == bad and asked == []  # nothing fetched over it
    atlas_pinned.pinned_atlas_files("TianS3", cache, folder, download=False)
    assert cached.read_bytes() == good


def test_one_pin_per_file_name():
    """The shared cache keys files by name: the registry's 7 names each have one address and sha256, and a
    registry pinning one name twice is refused, naming both addresses."""
    assert set(atlas_pinned.source_files(atlas_pinned.PINNED_ATLASES)) == {
        f.name for spec in atlas_pinned.PINNED_ATLASES.values() for f in spec.files.values()}
    assert len(atlas_pinned.SOURCE_FILES) == N_SOURCE_FILES
    labels = atlas_pinned.TIAN_S3_LABELS
    other = atlas.AtlasFile(labels.name, labels.url.replace("62751401", "00000000"), "0" * 64)
    clash = {"TianS3": atlas_pinned.PINNED_ATLASES["TianS3"],
             "Other": dataclasses.replace(atlas_pinned.PINNED_ATLASES["TianS3"], name="Other", files={"labels": other})}
    with pytest.raises(ValueError, match="Other: file Tian_Subcortex_S3_3T_label.txt is pinned as") as err:
        atlas_pinned.source_files(clash)
    assert labels.url in str(err.value) and other.url in str(err.value)
