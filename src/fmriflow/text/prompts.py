"""Sequences the language model reads (fMRI code tokens, then a text prompt, then the answer) and
the numbers read back from what it writes.

The shared vocabulary is the text vocabulary followed by the fMRI codes: code ``k`` is token
``n_text + k``. A training sequence is ``[bos] codes... prompt... answer... [eos]``, padded;
only the answer and ``eos`` are predicted (the other labels are -100, which the loss ignores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

IGNORE = -100  # label of a position the loss skips (PyTorch's cross-entropy default)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class SharedVocab:
    """Ids of the shared vocabulary: ``n_text`` text tokens (specials included), then ``n_codes`` codes."""

    n_text: int
    n_codes: int
    bos: int
    eos: int
    pad: int

    @property
    def size(self) -> int:
        return self.n_text + self.n_codes

    def code_tokens(self, codes: Sequence[int]) -> list[int]:
        bad = [int(c) for c in codes if not 0 <= int(c) < self.n_codes]
        if bad:
            raise ValueError(f"fMRI codes must lie in [0, {self.n_codes}); got {bad[:5]}")
        return [self.n_text + int(c) for c in codes]


def prompt_ids(vocab: SharedVocab, codes: Sequence[int], prompt: Sequence[int]) -> list[int]:
    """What generation starts from: ``[bos] codes prompt``."""
    return [vocab.bos, *vocab.code_tokens(codes), *prompt]


def training_sequence(vocab: SharedVocab, codes: Sequence[int], prompt: Sequence[int], answer: Sequence[int],
                      length: int) -> tuple[list[int], list[int], list[int]]:
    """(input ids, labels, attention mask) of one example, padded to ``length``; labels are the
    input ids on the answer and ``eos`` and ``IGNORE`` elsewhere (the model shifts them itself)."""
    start = prompt_ids(vocab, codes, prompt)
    ids = [*start, *answer, vocab.eos]
    if len(ids) > length:
        raise ValueError(f"a sequence of {len(ids)} tokens ({len(codes)} codes, {len(prompt)} prompt, "
                         f"{len(answer)} answer) is longer than the model's {length} positions")
    labels = [IGNORE] * len(start) + [*answer, vocab.eos]
    pad = length - len(ids)
    return ids + [vocab.pad] * pad, labels + [IGNORE] * pad, [1] * len(ids) + [0] * pad


def parse_number(text: str) -> float | None:
    """The first number written in ``text`` ("about 34 years" -> 34.0); None when there is none."""
    match = _NUMBER.search(text)
    return float(match.group()) if match else None


@dataclass
class ParsedAnswers:
    """Numbers read from generated answers; ``unparseable`` counts those with none."""

    values: list[float | None]

    @property
    def unparseable(self) -> int:
        return sum(v is None for v in self.values)


def parse_answers(texts: Sequence[str]) -> ParsedAnswers:
    return ParsedAnswers([parse_number(t) for t in texts])


__all__ = ["IGNORE", "ParsedAnswers", "SharedVocab", "parse_answers", "parse_number", "prompt_ids", "training_sequence"]
