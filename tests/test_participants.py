"""fmriflow.datasets.participants: the target encoding against scikit-learn's encoders, and
fine-tuning's cohort read through the one participants.tsv reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import LabelEncoder, StandardScaler

from fmriflow.datasets.participants import TargetEncoding, bare
from fmriflow.errors import InputError
from fmriflow.finetune.cohort import load_cohort


@pytest.mark.parametrize("labels", [["b", "a", "c", "a", "b"], [1, 0, 0, 1, 1], [2.5, 10.0, 2.5, -1.0]])
def test_classes_are_the_labels_as_sorted_text_like_label_encoder(labels):
    texts = [str(label) for label in labels]
    reference = LabelEncoder().fit(texts)
    encoding = TargetEncoding.fit("classification", labels)
    assert list(encoding.classes) == reference.classes_.tolist()
    codes = encoding.encode(labels)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, reference.transform(texts))
    np.testing.assert_array_equal(encoding.decode(codes), reference.inverse_transform(codes))


def test_classification_refuses_a_label_outside_its_classes():
    encoding = TargetEncoding.fit("classification", ["a", "b"])
    with pytest.raises(ValueError, match=r"labels \['c'\] are not among the classes \['a', 'b'\]"):
        encoding.encode(["a", "c"])


@pytest.mark.parametrize("seed", range(3))
def test_regression_standardises_like_standard_scaler(seed):
    rng = np.random.default_rng(seed)
    fit_on = rng.normal(40, 12, 25)
    labels = rng.normal(40, 12, 60)
    reference = StandardScaler().fit(fit_on[:, None])
    encoding = TargetEncoding.fit("regression", fit_on)
    assert encoding.mean == pytest.approx(reference.mean_[0], rel=1e-12)
    assert encoding.std == pytest.approx(reference.scale_[0], rel=1e-12)
    codes = encoding.encode(labels)
    np.testing.assert_allclose(codes, reference.transform(labels[:, None])[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(encoding.decode(codes), labels, rtol=1e-12)


def test_regression_of_constant_labels_divides_by_one_as_standard_scaler_does():
    fit_on = np.full(5, 3.0)
    reference = StandardScaler().fit(fit_on[:, None])
    encoding = TargetEncoding.fit("regression", fit_on)
    assert (encoding.mean, encoding.std) == (3.0, reference.scale_[0]) == (3.0, 1.0)
    np.testing.assert_array_equal(encoding.encode([3.0, 4.5]), [0.0, 1.5])


def test_decoding_keeps_the_outputs_float_type():
    encoding = TargetEncoding.fit("regression", [1.0, 2.0, 4.0])
    outputs = np.array([0.5, -1.0], dtype=np.float32)
    assert encoding.decode(outputs).dtype == np.float32


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"'kind' must be one of \('classification', 'regression'\); 'ordinal'"):
        TargetEncoding.fit("ordinal", [1, 2])


def test_bare_strips_one_sub_prefix():
    assert [bare("sub-01"), bare("01"), bare(7), bare("sub-sub-02")] == ["01", "01", "7", "sub-02"]


def test_cohort_is_read_through_read_participants(tmp_path):
    path = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-01"], "response": [0, 1, 1]}).to_csv(
        path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"sub-01 is listed 2 times \(lines \[2, 4\]\)"):
        load_cohort(path, "response")
    with pytest.raises(InputError, match="participants table not found"):
        load_cohort(tmp_path / "absent.tsv", "response")
