"""What the QSIPrep / QSIRecon jobs hand on: the atlas QSIRecon is given, a record of QSIPrep's
outputs, and the subject's connectome at a fixed name for ``sc_connectome``.

- ``write_atlas_dataset``: the model's atlas as a dataset QSIRecon 26.0.0 reads with
  ``--datasets LABEL=PATH --atlases NAME`` (its "Using custom atlases" documentation and
  ``qsirecon/utils/atlases.py::collect_atlases``): ``dataset_description.json`` whose
  ``DatasetType`` is ``derivative`` (collect_atlases skips any other type, the BIDS-Atlas
  ``atlas`` included), ``tpl-<template>/tpl-<template>_atlas-<name>_dseg.nii.gz`` with its
  ``.tsv`` (``index``, ``name``) and ``.json``. The image is reoriented to LPS+ with the sform
  zeroed, as that page asks. QSIRecon warps it from MNI152NLin2009cAsym; fmriflow's A424 lies on
  MNI152NLin6Asym and, with no template-to-template warp offline, its world coordinates are taken
  as MNI152NLin2009cAsym's (they differ by a few millimetres locally), the approximation
  ``fmriflow.resample`` makes the other way; the sidecar says so. ``qsiprep.atlas_image`` gives an
  image already in MNI152NLin2009cAsym instead.
- ``record_qsiprep``: after QSIPrep exits, the subject's preprocessed DWI (none is an error) in a
  table with checksums: the declared output of the QSIPrep job, since QSIPrep's own file names
  depend on the input's entities.
- ``collect_connectome``: after QSIRecon exits, the subject's one ``*_connectivity.mat`` holding
  the atlas, copied to a fixed name with its sidecar.

Run from the jobs' shell commands: ``python -m fmriflow.sc.qsirecon {record-qsiprep,collect} ...``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path, read_tsv, save_nifti, sha256sum, write_json, write_tsv
from ..provenance import write_sidecar
from .qsiprep import ATLAS_TEMPLATE

SOURCE_SPACE = "MNI152NLin6Asym"  # the grid fmriflow's atlases lie on


def atlas_files(root: str | Path, atlas: str) -> dict[str, Path]:
    """Where ``write_atlas_dataset`` puts the atlas ``atlas`` under ``root`` (image, table, sidecar)."""
    stem = Path(root) / f"tpl-{ATLAS_TEMPLATE}" / f"tpl-{ATLAS_TEMPLATE}_atlas-{atlas}_dseg"
    return {"description": Path(root) / "dataset_description.json", "image": stem.with_name(stem.name + ".nii.gz"),
            "labels": stem.with_name(stem.name + ".tsv"), "sidecar": stem.with_name(stem.name + ".json")}


def lps_dseg(img):
    """The label image in LPS+ orientation, integer labels, sform zeroed (code 0), qform kept."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    data = np.asanyarray(img.dataobj)
    labels = np.rint(data)
    if not np.allclose(data, labels):
        raise InputError(img.get_filename(), "a label atlas must hold whole numbers")
    img = nib.Nifti1Image(labels.astype(np.int32), img.affine)
    img = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S"))))
    img.set_qform(img.affine, code=4)  # MNI152 space
    img.header["srow_x"][:] = img.header["srow_y"][:] = img.header["srow_z"][:] = 0
    img.header["sform_code"] = 0
    return img


def write_atlas_dataset(image: str | Path, labels: str | Path, atlas: str, root: str | Path, *,
                        source_space: str = SOURCE_SPACE) -> dict[str, Path]:
    """The atlas (``image``, look-up table ``labels`` with ``index`` and ``name``) as QSIRecon's dataset."""
    from ..io import load_nifti
    from .. import __version__

    if not atlas.isalnum():
        raise InputError(atlas, "QSIRecon's atlas entity must be alphanumeric", settings=("atlas",))
    table = read_tsv(labels)
    if not {"index", "name"} <= set(table.columns):
        raise InputError(labels, f"needs index and name columns; has {list(table.columns)}")
    img = lps_dseg(load_nifti(image))
    unknown = np.setdiff1d(np.unique(np.asanyarray(img.dataobj)), [0, *table["index"].astype(int)])
    if unknown.size:
        raise InputError(image, f"labels {unknown[:8].tolist()} are not in the look-up table {labels}")
    files = atlas_files(root, atlas)
    files["image"].parent.mkdir(parents=True, exist_ok=True)
    write_json(files["description"], {
        "Name": "fmriflow atlases for QSIRecon", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fmriflow", "Version": __version__}]})
    save_nifti(img, files["image"])
    write_tsv(files["labels"], pd.DataFrame({"index": table["index"].astype(int), "name": table["name"].astype(str)}))
    approximate = source_space != ATLAS_TEMPLATE
    metadata = {"Template": ATLAS_TEMPLATE, "SourceSpace": source_space, "Orientation": "LPS+, sform zeroed",
                "Transform": (f"none: the {source_space} image's world coordinates are taken as {ATLAS_TEMPLATE}'s "
                              "(a few millimetres apart locally)") if approximate else "none"}
    write_sidecar(files["image"], "qsirecon_atlas", [image, labels], parameters={"atlas": atlas},
                  metadata_fields=metadata, also=[files["labels"]])
    return files


def record_qsiprep(qsiprep_dir: str | Path, subject: str, out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """The subject's preprocessed DWI below ``qsiprep_dir`` listed in ``out`` (path, sha256), with its sidecar."""
    root = Path(qsiprep_dir)
    found = sorted((root / f"sub-{subject}").glob("**/dwi/*_space-ACPC_desc-preproc_dwi.nii.gz"))
    if not found:
        raise InputError(root / f"sub-{subject}", "QSIPrep exited without a preprocessed DWI "
                                                  "(*_space-ACPC_desc-preproc_dwi.nii.gz): see its log")
    write_tsv(out, pd.DataFrame({"path": [str(p.relative_to(root)) for p in found],
                                 "sha256": [sha256sum(p) for p in found]}))
    return write_sidecar(out, "qsiprep", inputs, parameters={"subject": subject, "qsiprep_dir": str(root)})


def find_connectivity(qsirecon_dir: str | Path, subject: str, atlas: str) -> Path:
    """The subject's one QSIRecon connectivity file holding ``atlas``; an error naming what is there."""
    from scipy.io import whosmat

    root = Path(qsirecon_dir)
    mats = sorted(root.glob(f"derivatives/qsirecon-*/sub-{subject}/**/*_connectivity.mat"))
    holding = [p for p in mats if any(name.startswith(f"atlas_{atlas}_") for name, _, _ in whosmat(p))]
    if len(holding) != 1:
        raise InputError(root, f"{len(holding)} connectivity files of subject {subject} hold atlas {atlas} "
                               f"({[str(p) for p in holding] or [str(p) for p in mats]}); need exactly one "
                               "(several sessions: select one with --session-id in qsiprep.qsirecon_args)")
    return holding[0]


def collect_connectome(qsirecon_dir: str | Path, subject: str, atlas: str, out: str | Path,
                       inputs: Sequence[str | Path] = ()) -> Path:
    """``find_connectivity``'s file copied to ``out`` (atomically), with a sidecar naming the original."""
    source = find_connectivity(qsirecon_dir, subject, atlas)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    return write_sidecar(out, "qsirecon", [source, *inputs], parameters={"subject": subject, "atlas": atlas},
                         metadata_fields={"CopiedFrom": str(source)})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmriflow.sc.qsirecon", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    record = sub.add_parser("record-qsiprep", help="list a subject's QSIPrep outputs (record_qsiprep)")
    record.add_argument("--qsiprep-dir", required=True)
    record.add_argument("--inputs", nargs="*", default=[])
    collect = sub.add_parser("collect", help="a subject's connectome at a fixed name (collect_connectome)")
    collect.add_argument("--qsirecon-dir", required=True)
    collect.add_argument("--atlas", required=True)
    collect.add_argument("--inputs", nargs="*", default=[])
    for each in (record, collect):
        each.add_argument("--subject", required=True)
        each.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "record-qsiprep":
            record_qsiprep(args.qsiprep_dir, args.subject, args.out, args.inputs)
        else:
            collect_connectome(args.qsirecon_dir, args.subject, args.atlas, args.out, args.inputs)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
