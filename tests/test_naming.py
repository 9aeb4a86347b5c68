"""Derivative names: BIDS entity order, and that pybids parses them back."""

import pytest
from bids.layout import parse_file_entities

from fmriflow import naming


def test_run_key_and_derivative_round_trip():
    raw = "sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-mb_run-01_bold.nii.gz"
    key = naming.run_key_from_path(raw)
    assert key == "sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-mb_run-01"
    name = naming.template_derivative(key, atlas="A424", stat="pearsoncorrelation", suffix="relmat", extension=".tsv")
    assert name.endswith("_run-01_space-MNI152NLin6Asym_res-2_atlas-A424_stat-pearsoncorrelation_relmat.tsv")
    entities = parse_file_entities(name)
    assert entities["subject"] == "01" and entities["session"] == "2" and entities["task"] == "rest"
    assert entities["space"] == "MNI152NLin6Asym" and entities["suffix"] == "relmat"


def test_order_does_not_follow_argument_order():
    a = naming.derivative("sub-1/func/sub-1_task-x", desc="denoised", space="S", suffix="bold", extension=".nii.gz")
    assert a == "sub-1/func/sub-1_task-x_space-S_desc-denoised_bold.nii.gz"


def test_unknown_entity_rejected():
    with pytest.raises(ValueError, match="unknown derivative entities"):
        naming.derivative("sub-1/func/sub-1_task-x", colour="red", suffix="bold", extension=".nii.gz")
