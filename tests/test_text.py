"""The text side of fMRI-text alignment (fmriflow.text): subject texts, the tokenizer's round trip,
prompts of fMRI codes + text, answer parsing, the language model over the shared vocabulary and
the MAE against the training mean. Tests that need the ``text`` extra skip without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmriflow.errors import InputError
from fmriflow.text.prompts import IGNORE, SharedVocab, parse_answers, parse_number, prompt_ids, training_sequence
from fmriflow.text.scoring import mae_against_mean, subject_predictions
from fmriflow.text.subjects import answer_text, subject_texts, template_columns

try:
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401

    HAVE_TEXT = True
except ImportError:
    HAVE_TEXT = False
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason='needs the text extra: pip install ".[text]" (tokenizers, transformers)')


@pytest.fixture
def participants(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\tsex\tnote\n"
                    "sub-01\t34\tF\tright-handed, no medication\n"
                    "sub-02\t61.5\tM\tn/a\n"
                    "sub-03\t\tF\tleft-handed\n")
    return path


def test_subject_texts_from_template_and_column(participants):
    texts = subject_texts(participants, template="sex: {sex}; age: {age}")
    assert texts == {"01": "sex: F; age: 34", "02": "sex: M; age: 61.5", "03": "sex: F; age: n/a"}
    assert subject_texts(participants, column="note")["01"] == "right-handed, no medication"
    assert template_columns("sex: {sex}; age: {age}") == ["sex", "age"]


def test_subject_texts_errors_name_the_setting(participants):
    with pytest.raises(InputError, match=r"names \['diagnosis'\], which participants.tsv lacks"):
        subject_texts(participants, template="dx: {diagnosis}")
    with pytest.raises(InputError, match="not both"):
        subject_texts(participants, template="{age}", column="note")
    with pytest.raises(InputError, match="must name a column"):
        template_columns("age: {}")


def test_answer_text():
    assert [answer_text(v) for v in (34, 34.0, "61.5", 0.125, "F")] == ["34", "34", "61.5", "0.12", "F"]


@needs_text
def test_tokenizer_round_trip_and_digits():
    from fmriflow.text.tokenizer import TextTokenizer

    texts = [f"sex: {s}; age: {a}" for s, a in zip("FMFMF", (34, 61, 22, 45, 58))]
    tok = TextTokenizer.train(texts, vocab_size=300)
    for text in [*texts, "age: 907; sex: X, note: ünïcode ✓", "  two  spaces\tand a tab"]:
        assert tok.decode(tok.encode(text)) == text
    # every digit is a token of its own, so unseen numbers encode digit by digit
    assert [tok.decode([i]) for i in tok.encode("1234")] == ["1", "2", "3", "4"]
    assert {tok.pad, tok.bos, tok.eos} == set(range(3)) and tok.eos not in tok.ordinary_ids()
    # what model.pt records reads back as the same tokenizer
    again = TextTokenizer.from_json(tok.to_json())
    assert again.encode(texts[1]) == tok.encode(texts[1]) and again.size == tok.size


def test_prompt_building():
    vocab = SharedVocab(n_text=10, n_codes=4, bos=1, eos=2, pad=0)
    assert prompt_ids(vocab, [3, 0, 1], [5, 6]) == [1, 13, 10, 11, 5, 6]
    ids, labels, mask = training_sequence(vocab, [3, 0], [5], [7, 8], length=10)
    assert ids == [1, 13, 10, 5, 7, 8, 2, 0, 0, 0]
    assert labels == [IGNORE] * 4 + [7, 8, 2] + [IGNORE] * 3
    assert mask == [1] * 7 + [0] * 3
    with pytest.raises(ValueError, match="longer than the model's 5 positions"):
        training_sequence(vocab, [3, 0], [5], [7, 8], length=5)
    with pytest.raises(ValueError, match=r"fMRI codes must lie in \[0, 4\)"):
        vocab.code_tokens([4])


def test_answer_parsing_counts_unparseable():
    assert parse_number("34") == 34.0 and parse_number(" about 61.5 years") == 61.5
    assert parse_number("-2.") == -2.0 and parse_number(".5") == 0.5 and parse_number("age: n/a") is None
    parsed = parse_answers(["42", "", "forty", "3 9"])
    assert parsed.values == [42.0, None, None, 3.0] and parsed.unparseable == 2


def test_subject_predictions_and_mae_against_mean():
    import pandas as pd

    rows = pd.DataFrame({"subject": ["a", "a", "b", "c", "c"], "truth": [30.0, 30.0, 50.0, 40.0, 40.0],
                         "parsed": [28.0, np.nan, np.nan, 44.0, 40.0]})
    per = subject_predictions(rows)
    assert per["prediction"].tolist()[0] == 28.0 and np.isnan(per["prediction"].tolist()[1])
    assert per["unparseable"].tolist() == [1, 1, 0] and per["windows"].tolist() == [2, 1, 2]
    result = mae_against_mean([30, 40, 50, 60], [31, 38, 50, 66], train_mean=45.0, n_boot=2000)
    assert result["mae"] == pytest.approx(np.mean([1, 2, 0, 6]))
    assert result["mae_mean_baseline"] == pytest.approx(np.mean([15, 5, 5, 15]))
    assert result["mae_difference"] == pytest.approx(result["mae"] - result["mae_mean_baseline"])
    assert result["mae_ci_low"] <= result["mae"] <= result["mae_ci_high"]
    assert result["mae_difference_ci_high"] < 0


@needs_text
def test_lm_vocabulary_embeddings_and_loss_on_the_answer_only():
    from fmriflow.text.lm import build_lm

    vocab = SharedVocab(n_text=12, n_codes=5, bos=1, eos=2, pad=0)
    table, codebook = torch.randn(12, 8), torch.randn(5, 8)
    model = build_lm("tiny", vocab, table, codebook, n_positions=16).eval()
    weight = model.lm.get_input_embeddings().weight
    torch.testing.assert_close(weight[:12], table * 0.02)
    torch.testing.assert_close(weight[12:], codebook * 0.02)
    ids, labels, mask = (torch.tensor([v]) for v in training_sequence(vocab, [0, 4], [5], [6, 7], length=10))
    out = model(ids, mask, labels)
    # the model shifts labels: token t+1 is predicted at t, over the answer and eos only
    logits = out.logits[0, :-1]
    target = labels[0, 1:]
    keep = target != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, expected)
    allowed = torch.zeros(vocab.size, dtype=torch.bool)
    allowed[3:12] = True
    allowed[vocab.eos] = True
    answers = model.greedy([prompt_ids(vocab, [0, 4], [5]), prompt_ids(vocab, [1], [5, 6])], allowed, vocab.eos, 4)
    assert all(all(3 <= t < 12 for t in seq) and len(seq) <= 4 for seq in answers)


def test_subject_medians_pool_every_sampled_answer():
    import pandas as pd

    from fmriflow.text.scoring import subject_medians

    rows = pd.DataFrame({"subject": ["a"] * 5 + ["b"] * 3, "truth": [30.0] * 5 + [50.0] * 3,
                         "parsed": [20, 31, np.nan, 33, 90, np.nan, np.nan, np.nan]})
    per = subject_medians(rows).set_index("subject")
    assert per.loc["a", "prediction"] == np.median([20, 31, 33, 90])  # 32: not the mean's 43.5
    assert np.isnan(per.loc["b", "prediction"])
    assert per["unparseable"].to_dict() == {"a": 1, "b": 3} and per["answers"].to_dict() == {"a": 5, "b": 3}


@needs_text
def test_lm_samples_follow_its_next_token_distribution():
    """The first sampled token's frequencies (expected 0.08-0.42 here) against the softmax of the
    model's own logits over the allowed ids (4,000 draws: each frequency within 4 binomial SDs); the
    same seed draws the same; answers stop at eos or max_new and hold allowed ids only."""
    from fmriflow.text.lm import build_lm

    vocab = SharedVocab(n_text=12, n_codes=5, bos=1, eos=2, pad=0)
    torch.manual_seed(3)
    model = build_lm("tiny", vocab, torch.randn(12, 8) * 10, torch.randn(5, 8) * 10, n_positions=16).eval()
    allowed = torch.zeros(vocab.size, dtype=torch.bool)
    allowed[[2, 3, 4, 5, 6]] = True
    prompt = prompt_ids(vocab, [0, 4], [5])
    with torch.no_grad():
        logits = model.lm(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    expected = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)[[2, 3, 4, 5, 6]].numpy()
    n = 4000
    draws = model.sample([prompt], allowed, vocab.eos, 1, n, torch.Generator().manual_seed(0))[0]
    first = np.array([d[0] if d else vocab.eos for d in draws])  # eos is dropped from an answer
    observed = np.array([(first == t).mean() for t in (2, 3, 4, 5, 6)])
    bound = 4 * np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(observed - expected) <= bound + 1e-9), (observed, expected)
    again = model.sample([prompt], allowed, vocab.eos, 1, n, torch.Generator().manual_seed(0))[0]
    assert again == draws
    two = [prompt, prompt_ids(vocab, [1], [5, 6])]
    longer = model.sample(two, allowed, vocab.eos, 4, 3, torch.Generator().manual_seed(1))
    assert [len(d) for d in longer] == [3, 3]
    assert all(all(t in (3, 4, 5, 6) for t in seq) and len(seq) <= 4 for d in longer for seq in d)


def test_answers_with_line_breaks_survive_a_tsv_round_trip(tmp_path):
    """Generated answers may hold tabs and carriage returns (an untrained model writes any byte): written
    with their control pictures, the TSV reads back row for row, and the same number parses from them."""
    import pandas as pd

    from fmriflow.io import read_tsv, write_tsv
    from fmriflow.training.text_tasks import visible

    raw = [" 34\r", "\t\n5\x00.5", "a\rb", " 61.5"]
    write_tsv(tmp_path / "a.tsv", pd.DataFrame({"answer": [visible(t) for t in raw], "k": range(4)}))
    back = read_tsv(tmp_path / "a.tsv", dtype={"answer": str})
    assert back["k"].tolist() == [0, 1, 2, 3]
    assert back["answer"].tolist() == [" 34\u240d", "\u2409\u240a5\u2400.5", "a\u240db", " 61.5"]
    assert [parse_number(t) for t in back["answer"]] == [parse_number(t) for t in raw] == [34.0, 5.0, None, 61.5]
