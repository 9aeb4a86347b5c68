"""The causal language model over the shared vocabulary (text tokens, then fMRI codes).

By default a small GPT-2-shaped model (``transformers.GPT2LMHeadModel``) trained from scratch,
as wide as the codes; its input embeddings start from the frozen text table the vq-align
encoder was aligned with and from the codebook, both scaled by the same factor to GPT-2's
initial range, so codes start where the alignment put them among the text tokens. With a
local pretrained model (``text_model``, read from its folder only) the codes are appended to
its vocabulary as they are: they were aligned with its own input embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from .prompts import SharedVocab


@dataclass
class CodeLMConfig:
    n_layer: int = 2  # from scratch: transformer blocks
    n_head: int = 2  # from scratch: attention heads (must divide the code width)
    n_embd: int = 32  # the code width
    n_positions: int = 64  # longest sequence: codes + prompt + answer
    vocab_size: int = 0  # text tokens + fMRI codes
    text_model: str = ""  # a local pretrained causal LM folder ("" : from scratch)


LM_CONFIGS = {"tiny": {"n_layer": 2, "n_head": 2}, "small": {"n_layer": 4, "n_head": 4}}


class CodeLM(nn.Module):
    """A ``transformers`` causal LM with a dataclass ``config`` (what fmriflow's model.pt records)."""

    def __init__(self, config: CodeLMConfig, lm: nn.Module):
        super().__init__()
        self.config, self.lm = config, lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def greedy(self, prompts: Sequence[Sequence[int]], allowed: torch.Tensor, eos: int, max_new: int) -> list[list[int]]:
        """Greedy continuations of each prompt (batched by prompt length, no padding), drawn only from the
        ids where ``allowed`` (bool, vocabulary) is True, up to ``eos`` or ``max_new`` tokens."""
        return self._continue(prompts, allowed, eos, max_new, lambda logits: logits.argmax(-1))

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], allowed: torch.Tensor, eos: int, max_new: int, n: int,
               generator: torch.Generator) -> list[list[list[int]]]:
        """``n`` continuations of each prompt drawn from the model's distribution (temperature 1) over
        the ``allowed`` ids, from ``generator`` (CPU): for each prompt, its ``n`` token lists."""
        def draw(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(logits, -1).cpu()
            return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)

        flat = self._continue([p for p in prompts for _ in range(n)], allowed, eos, max_new, draw)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _continue(self, prompts: Sequence[Sequence[int]], allowed: torch.Tensor, eos: int, max_new: int,
                  pick) -> list[list[int]]:
        """Continuations of each prompt, one token at a time chosen by ``pick`` (masked logits -> ids),
        batched by prompt length (no padding); ``eos`` and what follows it dropped."""
        device = next(self.parameters()).device
        out: list[list[int]] = [[] for _ in prompts]
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for rows in by_length.values():
            ids = torch.tensor([list(prompts[i]) for i in rows], device=device)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            for _ in range(max_new):
                logits = self.lm(input_ids=ids).logits[:, -1].float()
                nxt = pick(logits.masked_fill(~allowed.to(device), float("-inf")))
                for j, token in enumerate(nxt.tolist()):
                    if not done[j]:
                        out[rows[j]].append(token)
                done |= nxt == eos
                if bool(done.all()) or ids.shape[1] + 1 >= self.config.n_positions:
                    break
                ids = torch.cat([ids, nxt[:, None]], 1)
        return [seq[:seq.index(eos)] if eos in seq else seq for seq in out]


def build_lm(name: str, vocab: SharedVocab, text_table: torch.Tensor, codebook: torch.Tensor, n_positions: int,
             text_model: str = "", text_std: float = 1.0) -> CodeLM:
    """The language model named ``name`` (``LM_CONFIGS``) or the local ``text_model``, its embeddings
    set from ``text_table`` (n_text, dim) and ``codebook`` (n_codes, dim)."""
    from .tokenizer import require_text_extra

    require_text_extra()
    if name not in LM_CONFIGS:
        raise ValueError(f"'model' must be one of {sorted(LM_CONFIGS)} for task lm-finetune; {name!r} was provided")
    dim = int(codebook.shape[1])
    config = CodeLMConfig(n_embd=dim, n_positions=n_positions, vocab_size=vocab.size, text_model=text_model,
                          **LM_CONFIGS[name])
    lm = _pretrained(text_model, vocab, dim) if text_model else _from_scratch(config, vocab)
    scale = 1.0 if text_model else lm.config.initializer_range / text_std
    with torch.no_grad():
        weight = lm.get_input_embeddings().weight
        if not text_model:
            weight[:vocab.n_text] = text_table.to(weight.dtype) * scale
        weight[vocab.n_text:] = codebook.to(weight.dtype) * scale
    return CodeLM(config, lm)


def _from_scratch(config: CodeLMConfig, vocab: SharedVocab) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.n_embd % config.n_head:
        raise ValueError(f"{config.n_head} attention heads do not divide the code width {config.n_embd}")
    gpt = GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                     n_layer=config.n_layer, n_head=config.n_head, bos_token_id=vocab.bos, eos_token_id=vocab.eos,
                     pad_token_id=vocab.pad)
    return GPT2LMHeadModel(gpt)


def _pretrained(folder: str, vocab: SharedVocab, dim: int) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"no causal language model could be read from it ({exc})", settings=["text_model"]) from exc
    width = lm.get_input_embeddings().weight.shape[1]
    if width != dim:
        raise InputError(folder, f"its embeddings are {width}-d but the fMRI codes are {dim}-d: align with this "
                         "model's embeddings (vq-align with the same text_model)", settings=["text_model"])
    lm.resize_token_embeddings(vocab.size)
    return lm


def text_embeddings(folder: str) -> torch.Tensor:
    """The input embeddings of the local pretrained causal LM in ``folder`` (the text table vq-align aligns with)."""
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"no causal language model could be read from it ({exc})", settings=["text_model"]) from exc
    return lm.get_input_embeddings().weight.detach().float().clone()


def config_from_dict(values: dict) -> CodeLMConfig:
    return CodeLMConfig(**{f.name: values[f.name] for f in dataclasses.fields(CodeLMConfig) if f.name in values})


__all__ = ["CodeLM", "CodeLMConfig", "LM_CONFIGS", "build_lm", "config_from_dict", "text_embeddings"]
