"""The text tokenizer: trained on the subjects' texts with the ``tokenizers`` library, or a
local pretrained one (``transformers``, read from a folder only: nothing is downloaded).

The trained tokenizer is byte-level BPE (any text encodes, nothing is unknown) whose digits are
split one by one, so every number the model may have to write is a sequence of digit tokens
even when the training texts never held it. Its specials are ``<pad>``, ``<bos>`` and ``<eos>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import InputError

SPECIALS = ("<pad>", "<bos>", "<eos>")
EXTRA = "text"  # the optional dependency set holding tokenizers and transformers (pyproject.toml)


def require_text_extra() -> None:
    """Raise an ImportError naming the extra when ``tokenizers`` or ``transformers`` is missing."""
    missing = []
    for module in ("tokenizers", "transformers"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"fMRI-text alignment needs {' and '.join(missing)}: pip install \"fmriflow[{EXTRA}]\"")


class TextTokenizer:
    """One interface over a ``tokenizers.Tokenizer`` (trained) and a local ``transformers`` tokenizer."""

    def __init__(self, backend, kind: str, source: str = ""):
        self.backend, self.kind, self.source = backend, kind, source
        if kind == "trained":
            self.pad, self.bos, self.eos = (backend.token_to_id(t) for t in SPECIALS)
            self.size = backend.get_vocab_size()
        else:  # a pretrained tokenizer may lack pad and bos (GPT-2 has only its end-of-text token)
            eos = backend.eos_token_id if backend.eos_token_id is not None else backend.sep_token_id
            if eos is None:
                raise InputError(source, "the tokenizer has no end-of-sequence token", settings=["text_model"])
            self.eos = eos
            self.bos = backend.bos_token_id if backend.bos_token_id is not None else eos
            self.pad = backend.pad_token_id if backend.pad_token_id is not None else eos
            self.size = len(backend)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 512) -> "TextTokenizer":
        """Byte-level BPE with single-digit tokens, trained on ``texts`` (deterministic for the same texts)."""
        require_text_extra()
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok, "trained")

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        require_text_extra()
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), "trained")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "TextTokenizer":
        """A tokenizer saved in ``folder`` (``save_pretrained``); never downloads."""
        require_text_extra()
        from transformers import AutoTokenizer

        if not Path(folder).is_dir():
            raise InputError(folder, "not a folder holding a pretrained tokenizer (nothing is downloaded)",
                             settings=["text_model"])
        try:
            backend = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"no tokenizer could be read from it ({exc})", settings=["text_model"]) from exc
        return cls(backend, "pretrained", str(folder))

    def to_json(self) -> str:
        """The trained tokenizer as JSON (what model.pt records); a pretrained one is named by its folder."""
        return self.backend.to_str() if self.kind == "trained" else ""

    def encode(self, text: str) -> list[int]:
        if self.kind == "trained":
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; specials and ids outside the text vocabulary (fMRI codes) are dropped."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.size and int(i) not in self.special_ids]
        return self.backend.decode(keep) if self.kind == "trained" else self.backend.decode(keep, skip_special_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        return {self.pad, self.bos, self.eos}

    def ordinary_ids(self) -> list[int]:
        """Every id of the text vocabulary but the specials: the text side of the domain classifier."""
        return [i for i in range(self.size) if i not in self.special_ids]


def build_tokenizer(texts: Sequence[str], pretrained: str = "", vocab_size: int = 512) -> TextTokenizer:
    """The local pretrained tokenizer in ``pretrained`` when given, else one trained on ``texts``."""
    return TextTokenizer.from_pretrained(pretrained) if pretrained else TextTokenizer.train(texts, vocab_size)


__all__ = ["EXTRA", "SPECIALS", "TextTokenizer", "build_tokenizer", "require_text_extra"]
