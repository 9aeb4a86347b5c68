"""Atomic writes leave nothing behind on failure; sidecars are deterministic and complete."""

import hashlib
import json

import pytest

from fmriflow import io, provenance


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.tsv"
    target.write_text("good\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_shared_path_leaves_other_writers_temporary_files(tmp_path):
    """A shared path (a cache several jobs fill): another writer's fresh temporary file is left alone, one older
    than SHARED_STALE_S (a killed writer's) is removed; an unshared path removes both, as before."""
    import os
    import time

    target = tmp_path / "Tian_label.txt"
    fresh, old = tmp_path / ".Tian_label.txt.a1.tmp.txt", tmp_path / ".Tian_label.txt.b2.tmp.txt"
    for path in (fresh, old):
        path.write_text("partial")
    then = time.time() - io.SHARED_STALE_S - 60
    os.utime(old, (then, then))
    with io.atomic_path(target, shared=True) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and fresh.exists() and not old.exists()
    with io.atomic_path(target) as tmp:
        tmp.write_text("again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Tian_label.txt"]


def test_sidecar_records_inputs_and_is_deterministic(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"abc")
    art = tmp_path / "x_bold.nii.gz"
    art.write_bytes(b"")
    path = provenance.write_sidecar(art, "demo", [src], parameters={"b": 1, "a": 2}, metadata_fields={"RepetitionTime": 2.0})
    assert path == tmp_path / "x_bold.json"
    first = path.read_bytes()
    provenance.write_sidecar(art, "demo", [src], parameters={"a": 2, "b": 1}, metadata_fields={"RepetitionTime": 2.0})
    assert path.read_bytes() == first
    data = json.loads(first)
    assert data["Provenance"]["Inputs"] == [{"path": str(src), "sha256": hashlib.sha256(b"abc").hexdigest()}]
    assert data["Sources"] == [str(src)] and data["RepetitionTime"] == 2.0
    assert {"fmriflow", "numpy", "nilearn", "nibabel"} <= set(data["Provenance"]["Software"])


def test_dataset_description_refuses_other_version(tmp_path):
    provenance.write_dataset_description(tmp_path, {"a": 1})
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "fmriflow"
    desc["GeneratedBy"][0]["Version"] = "0.0.0-other"
    (tmp_path / "dataset_description.json").write_text(json.dumps(desc))
    with pytest.raises(RuntimeError, match="written by fmriflow 0.0.0-other"):
        provenance.write_dataset_description(tmp_path, {"a": 1})


def test_block_writer_makes_compression_independent_of_write_sizes(tmp_path):
    """The same bytes written in different pieces give the same ISA-L gzip stream, and it decompresses back."""
    import gzip

    import numpy as np
    from isal import igzip

    payload = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32).tobytes()

    def compress(piece: int) -> bytes:
        path = tmp_path / f"p{piece}.gz"
        with open(path, "wb") as raw, igzip.IGzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            writer = io.BlockWriter(gz)
            for start in range(0, len(payload), piece):
                writer.write(payload[start:start + piece])
            writer.close()
        return path.read_bytes()

    outputs = {compress(piece) for piece in (352, 65536, 1 << 20, 5_000_001)}
    assert len(outputs) == 1
    assert gzip.decompress(outputs.pop()) == payload


def test_known_checksums_are_recorded_without_reading_the_file(tmp_path):
    from fmriflow.provenance import describe_inputs

    present = tmp_path / "a.txt"
    present.write_bytes(b"abc")
    absent = tmp_path / "gone.txt"  # a known digest is taken as given: the file is not read
    described = describe_inputs([present, absent], known={str(absent): "f" * 64})
    assert described == [{"path": str(present), "sha256": hashlib.sha256(b"abc").hexdigest()},
                         {"path": str(absent), "sha256": "f" * 64}]


def test_load_nifti_reads_in_chunks_what_nibabel_reads(tmp_path, monkeypatch):
    """Chunks that split values and the image's end give nibabel's array (scaled int16 here)."""
    import nibabel as nib
    import numpy as np

    from fmriflow.errors import InputError

    monkeypatch.setattr(io.ChunkedReader, "CHUNK", 4099)  # odd: chunks end inside values
    data = np.random.default_rng(0).integers(-3000, 3000, (7, 6, 5, 9)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    loaded = io.load_nifti(path)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), nib.load(path).get_fdata())
    np.testing.assert_array_equal(loaded.affine, nib.load(path).affine)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="bold.nii.gz.*truncated"):
        io.load_nifti(path)
