"""fmriflow.checks on small files: each refusal names the file and says what is wrong.

The DAG-level matrix (tests/test_bad_inputs.py) runs the same checks through Snakemake; these
cover the variants it does not (uncompressed files, scaled integers, table details).
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmriflow.checks import check_bold_data
from fmriflow.datasets.participants import read_participants
from fmriflow.errors import InputError


def _save(path, data, slope=None, inter=None):
    img = nib.Nifti1Image(data, np.eye(4))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_non_finite_values_are_counted_and_located(tmp_path, suffix):
    data = np.random.default_rng(0).standard_normal((6, 5, 4, 9)).astype(np.float32)
    where = [(1, 2, 3, 7), (4, 0, 1, 2), (5, 4, 3, 8)]
    for i, j, k, t in where:
        data[i, j, k, t] = np.inf if t == 7 else np.nan
    path = _save(tmp_path / f"b{suffix}", data)
    first = min(where, key=lambda w: (w[3], w[2], w[1], w[0]))  # volume order, then Fortran voxel order
    message = f"{path}: 3 NaN or infinite value(s), the first in volume {first[3]} at voxel {first[:3]}"
    with pytest.raises(InputError, match=re.escape(message)):
        check_bold_data(path)


def test_truncated_uncompressed_file(tmp_path):
    path = _save(tmp_path / "b.nii", np.ones((4, 4, 4, 10), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=re.escape(f"{path}: file ends before volume 10 of 10 (truncated?)")):
        check_bold_data(path)


def test_empty_constant_and_scaled_images(tmp_path):
    zeros = _save(tmp_path / "z.nii.gz", np.zeros((4, 4, 4, 5), np.int16))
    with pytest.raises(InputError, match="every voxel is 0 in all 5 volumes: an empty run"):
        check_bold_data(zeros)
    # stored zeros scaled to 7: constant, not empty
    scaled = _save(tmp_path / "s.nii.gz", np.zeros((4, 4, 4, 5), np.int16), slope=2.0, inter=7.0)
    with pytest.raises(InputError, match="no voxel changes over the 5 volumes"):
        check_bold_data(scaled)
    data = np.full((4, 4, 4, 5), 3, np.int16)
    data[1, 1, 1, 4] = 4  # one voxel varies: usable
    assert check_bold_data(_save(tmp_path / "ok.nii.gz", data)) == {"n_volumes": 5, "n_voxels_varying": 1}


def test_participants_table_checks(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t30\nsub-02\t31\nsub-02\t32\nsub-03\t33\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: sub-02 is listed 2 times (lines [3, 4])")):
        read_participants(path)
    path.write_text("subject\tage\nsub-01\t30\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: no participant_id column (columns: ['subject', 'age'])")):
        read_participants(path)
    path.write_text("participant_id\tage\n01\t30\n")
    with pytest.raises(InputError, match="participant_id '01' does not start with 'sub-'"):
        read_participants(path)
    path.write_text("participant_id\tage\nsub-01\t30\nsub-02\t31\n")
    assert read_participants(path)["participant_id"].tolist() == ["sub-01", "sub-02"]


def test_config_min_epochs_above_max_epochs_is_named(tmp_path):
    import yaml

    from fmriflow.checks import check_config

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    schema = repo / "workflow" / "schemas" / "config.schema.yaml"
    check_config(config, schema)  # the shipped config is valid
    config["finetune"].update(min_epochs=5, max_epochs=3)
    with pytest.raises(InputError, match=r"finetune.min_epochs: 5 is more than finetune.max_epochs \(3\)"):
        check_config(config, schema, ["my.yaml"])


def _shipped():
    import yaml

    from fmriflow.checks import with_defaults

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return yaml.safe_load((repo / "config" / "config.yaml").read_text()), schema, with_defaults


def test_participant_columns_are_those_of_the_steps_that_run():
    """The shipped config names no column; a key counts only when its step runs (set-ups included)."""
    from fmriflow.checks import participant_columns_in_use

    config, schema, with_defaults = _shipped()
    assert participant_columns_in_use(with_defaults(config, schema)) == {}

    def used(**sections):
        return participant_columns_in_use(with_defaults({**config, **sections}, schema))

    named = {"dataset": {"stratify": "response"}, "voxel": {"target": "response"}}
    assert used(**named) == {"dataset.stratify": "response"}  # pretraining on by default; voxel models off
    assert used(**named, pretrain={"enabled": False}) == {}  # no dataset is built
    assert used(dataset=named["dataset"], pretrain={"enabled": False}, voxel={"enabled": True, "target": "response"}) == {
        "dataset.stratify": "response", "voxel.target": "response"}  # the voxel data reuse the region splits
    finetune = {"enabled": True, "target": "y", "drug_column": "drug", "site_column": "site", "setups": ["agnostic", "site"]}
    assert used(finetune=finetune) == {"finetune.target": "y", "finetune.site_column": "site"}
    assert used(finetune={"enabled": True}) == {"finetune.target": None}  # required: refused, naming the choices


def test_participant_columns_checked_from_the_header(tmp_path):
    """Only the header is read: rows are the jobs' business (a repeated subject passes here)."""
    from fmriflow.checks import check_participant_columns

    config, schema, with_defaults = _shipped()
    path = tmp_path / "participants.tsv"
    check_participant_columns(with_defaults(config, schema), path)  # no column named: no table needed
    config = with_defaults({**config, "report": {"group_column": "group"}}, schema)
    with pytest.raises(InputError, match=re.escape(f"{path}: participants table not found, but the config names its "
                                                   "columns (report.group_column): add the table, or set "
                                                   "report.group_column: null (no group comparison)")):
        check_participant_columns(config, path)
    path.write_text("participant_id\tgroup\nsub-01\ta\nsub-01\tb\n")
    check_participant_columns(config, path)
    path.write_text("participant_id\n")
    with pytest.raises(InputError, match=re.escape("report.group_column: column 'group' is not in the table (its "
                                                   "columns: ['participant_id']); set report.group_column: null")):
        check_participant_columns(config, path)


def test_config_is_put_in_the_schemas_order():
    """Whatever file set a key first, the resolved config lists its keys in the schema's order;
    names under atlas.extra keep the user's order."""
    from fmriflow.checks import in_schema_order

    config, schema, with_defaults = _shipped()
    shuffled = {k: v for k, v in reversed(config.items()) if k not in ("finetune", "atlas")}
    shuffled.update(finetune={"target": "y", "enabled": True}, atlas={"extra": {"Zeta": {}, "Alpha": {}}})
    resolved = with_defaults(shuffled, schema)
    in_schema_order(resolved, schema)
    assert list(resolved) == list(schema["properties"])
    assert list(resolved["finetune"]) == list(schema["properties"]["finetune"]["properties"])
    assert list(resolved["atlas"]["extra"]) == ["Zeta", "Alpha"]
    assert resolved == with_defaults(shuffled, schema)  # the same values


def test_finetuning_without_pretraining_names_both_keys():
    from fmriflow.checks import check_config

    config, _, _ = _shipped()
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    config = {**config, "pretrain": {"enabled": False}, "finetune": {"enabled": True, "target": "y"}}
    with pytest.raises(InputError, match=r"finetune.enabled: true needs pretrain.enabled: true .*; set "
                                         r"finetune.enabled: false, or pretrain.enabled: true"):
        check_config(config, schema, ["my.yaml"])


def test_config_rejected_by_the_schema_names_each_key():
    from fmriflow.checks import check_config

    config, _, _ = _shipped()
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    config = {**config, "pretrain": {"enabled": "yes"}, "dataset": {"strid": 3}}
    with pytest.raises(InputError) as failure:
        check_config(config, schema, ["my.yaml"])
    message = str(failure.value)
    assert message.startswith("my.yaml: 2 config value(s) rejected by config.schema.yaml:\n")
    assert "\n  dataset: Additional properties are not allowed ('strid' was unexpected) (allowed: fractions," in message
    assert "\n  pretrain.enabled: 'yes' is not of type 'boolean'" in message
