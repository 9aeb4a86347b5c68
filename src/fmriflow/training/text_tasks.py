"""The fMRI-text alignment tasks of ``fmriflow.train`` (issue 22).

- ``vq-align``: the patch autoencoder with a vector-quantised latent and a domain classifier
  behind a gradient reversal (``fmriflow.models.vqalign``), on a region dataset. The text side
  is the embedding table of the text vocabulary: a tokenizer trained on the training subjects'
  texts (``text_template`` or ``text_column`` over participants.tsv) with a frozen random table,
  or a local pretrained model's tokenizer and input embeddings (``text_model``). The reversed
  gradient's weight rises over training to ``align_weight`` (``reversal_weight``); 0 is the
  ablation without the domain classifier. Dead codes restart every ``restart_every`` steps on
  the batch's latents; at step 0 every code starts on a latent of the first batch. The weight is
  gated by the classifier's running training accuracy (``reversal_gate``: none at or below chance). With the
  model's ``gain_levels``, the amplitude bins are fitted on (up to 512) training windows first. Validation metrics per evaluation: reconstruction R^2, the classifier's
  balanced accuracy, codebook perplexity and usage. Beside model.pt: ``region_r2.tsv``.
- ``lm-finetune``: the vq-align model (``init_from``) turns each window into code tokens; a
  causal LM over text tokens + codes (``fmriflow.text.lm``) learns ``[bos] codes prompt answer
  [eos]`` with the target column as the answer. Once trained it answers for the validation and
  test subjects; the numbers parsed from its answers (unparseable ones counted) are scored by MAE
  against predicting the training mean, with bootstrap CIs, beside a ridge regression on the
  subjects' code histograms. A subject's answer is the median of answers sampled from the model
  (what an MAE rewards); greedy decoding is scored beside it: ``answers.tsv`` (greedy),
  ``samples.tsv``, ``predictions.tsv`` and ``lm_metrics.tsv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ..errors import InputError
from .config import Task, TrainConfig

VQ_FIELDS = ("recon_r2", "disc_acc", "perplexity", "code_usage", "reversal_weight")
HELD_OUT = ("val", "test")


def vq_align_task(cfg: TrainConfig) -> Task:
    from ..datasets.regions import RegionWindowDataset, load_card, read_splits
    from ..models.vqalign import CONFIGS, create_vqalign, random_text_table
    from ..text.tokenizer import build_tokenizer

    if cfg.model not in CONFIGS:
        raise InputError(None, f"'model' must be one of {sorted(CONFIGS)} for task vq-align; {cfg.model!r} was provided",
                         settings=["model"])
    if cfg.reversal_gate < 0:
        raise InputError(None, f"'reversal_gate' must be >= 0 (0: no gate); {cfg.reversal_gate!r} was provided",
                         settings=["reversal_gate"])
    splits = read_splits(Path(cfg.dataset) / "splits.tsv")
    texts = _texts(cfg)
    train_texts = [texts[s] for s in splits.loc[splits["split"] == "train", "subject"] if s in texts]
    tokenizer = build_tokenizer(train_texts, cfg.text_model)
    if cfg.text_model:
        from ..text.lm import text_embeddings

        table = text_embeddings(cfg.text_model)
    else:
        table = random_text_table(tokenizer.size, CONFIGS[cfg.model].dim, CONFIGS[cfg.model].text_std, seed=cfg.seed)
    ids = torch.tensor([i for i in tokenizer.ordinary_ids() if i < len(table)])
    model = create_vqalign(cfg.model, int(load_card(cfg.dataset)["n_regions"]), table, ids)
    train_set, val_set = RegionWindowDataset(cfg.dataset, "train"), RegionWindowDataset(cfg.dataset, "val")
    if model.config.gain_levels:  # amplitude bins of equal counts over (up to 512) training windows
        model.fit_gain_edges(torch.stack([train_set[i]["x"] for i in range(min(512, len(train_set)))]))
    return Task(
        model=model, train_set=train_set, val_set=val_set,
        loss=lambda m, batch, noise: m(batch["x"], batch["region_mask"]).loss,
        n_noise=lambda x: 0,
        info={"tokenizer": tokenizer.to_json(), "text_model": cfg.text_model, "align_weight": cfg.align_weight,
              "n_text_tokens": tokenizer.size},
        before_step=lambda m, batch, step: _schedule(m, batch, step, cfg),
        metrics=lambda m: vq_metrics(m, val_set, cfg.batch_size)[0],
        metric_fields=VQ_FIELDS,
        finish=lambda m, out: _write_region_r2(m, val_set, cfg, Path(out)),
    )


def _texts(cfg: TrainConfig) -> dict[str, str]:
    from ..text.subjects import subject_texts

    if not cfg.participants:
        raise InputError(None, f"task {cfg.task} needs --participants (participants.tsv)", settings=["participants"])
    return subject_texts(cfg.participants, template=cfg.text_template, column=cfg.text_column)


def _schedule(model, batch: dict, step: int, cfg: TrainConfig) -> None:
    """The reversal weight of ``step``; dead codes restarted on this batch's latents every ``restart_every`` steps."""
    from ..models.vqalign import reversal_gate, reversal_weight

    # the schedule's weight, gated by the classifier's running accuracy (on the device: no host sync)
    gate = reversal_gate(model.disc_acc_ema, cfg.reversal_gate).to(model.reversal.weight)
    model.reversal.weight.copy_(reversal_weight(step, cfg.max_steps, cfg.align_weight) * gate)
    # draws from generators seeded by (seed, step, purpose), not torch's global one (a DataLoader's start
    # draws from that): a resumed run draws what an uninterrupted one would have
    local, n_patches = batch["x"].shape[0], batch["x"].shape[2] // model.config.patch * model.config.groups
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    # the global batch's draw, this rank's share of it: the same classifier inputs for any number of processes
    positions = torch.randint(len(model.text_ids), (cfg.batch_size * n_patches,), generator=_generator(cfg, step, 0))
    model.set_text_draw(positions[rank * local * n_patches:(rank + 1) * local * n_patches])
    if step == 0 or (cfg.restart_every and step % cfg.restart_every == 0):
        with torch.no_grad():
            latents = model.encode(batch["x"])
        if step == 0:  # every code starts on a latent of the first batch: none out of reach, none dead at once
            model.quantizer.restart(latents, torch.arange(model.config.n_codes), generator=_generator(cfg, step, 1))
        else:
            model.quantizer.restart_dead(latents, generator=_generator(cfg, step, 1))


def _generator(cfg: TrainConfig, step: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, purpose]).generate_state(1)[0]))


@torch.no_grad()
def vq_metrics(model, dataset, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    """Validation metrics of a vq-align model, and the R^2 of each region.

    R^2 per region is 1 - SSE / SST over every validation window and time point where the
    region has data (SST around the region's validation mean); the overall R^2 pools the sums
    of every region. The classifier's balanced accuracy compares every validation code vector
    with every text row it draws from.
    """
    from torch.utils.data import default_collate

    from ..models.vq import code_perplexity

    device = next(model.parameters()).device
    n = len(dataset)
    if n == 0:
        return {k: float("nan") for k in VQ_FIELDS}, np.array([])
    xs, recons, masks, vectors, codes = [], [], [], [], []
    for start in range(0, n, batch_size):
        batch = default_collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        x, mask = batch["x"].to(device), batch["region_mask"].to(device)
        out = model(x, mask)
        xs.append(x.double()), recons.append(out.reconstruction.double()), masks.append(mask)
        codes.append(out.codes.reshape(-1))
        vectors.append(model.quantizer.lookup(out.codes.reshape(-1)))
    x, recon, mask = torch.cat(xs), torch.cat(recons), torch.cat(masks)[:, :, None].double()
    count = mask.sum((0, 2)) * x.shape[2]
    mean = (x * mask).sum((0, 2)) / count.clamp_min(1)
    sse = (((recon - x) ** 2) * mask).sum((0, 2))
    sst = (((x - mean[None, :, None]) ** 2) * mask).sum((0, 2))
    region_r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-12), torch.full_like(sst, float("nan")))
    _, acc = model._discriminate(torch.cat(vectors), model.text_table[model.text_ids])
    codes = torch.cat(codes)
    metrics = {"recon_r2": float(1 - sse.sum() / sst.sum()), "disc_acc": float(acc),
               "perplexity": float(code_perplexity(codes, model.config.n_codes)),
               "code_usage": float((torch.bincount(codes, minlength=model.config.n_codes) > 0).float().mean()),
               "reversal_weight": float(model.reversal.weight)}
    return metrics, region_r2.cpu().numpy()


def _write_region_r2(model, dataset, cfg: TrainConfig, out: Path) -> list[Path]:
    from ..datasets.regions import scaling
    from ..io import write_tsv

    was_training = model.training
    model.eval()
    metrics, r2 = vq_metrics(model, dataset, cfg.batch_size)
    model.train(was_training)
    regions = scaling(cfg.dataset)["region"].tolist()
    table = pd.DataFrame({"region": regions if len(regions) == len(r2) else range(len(r2)), "r2": r2})
    write_tsv(out / "region_r2.tsv", table)
    return [out / "region_r2.tsv"]


class SequenceDataset(torch.utils.data.Dataset):
    """Padded token sequences in memory: ``x`` (input ids), ``labels`` and ``attention_mask``."""

    def __init__(self, rows: pd.DataFrame):
        self.ids = torch.tensor(np.stack(rows["ids"].to_list()) if len(rows) else np.zeros((0, 1)), dtype=torch.long)
        self.labels = torch.tensor(np.stack(rows["labels"].to_list()) if len(rows) else np.zeros((0, 1)), dtype=torch.long)
        self.mask = torch.tensor(np.stack(rows["mask"].to_list()) if len(rows) else np.zeros((0, 1)), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.ids[i], "labels": self.labels[i], "attention_mask": self.mask[i], "index": i}


def load_vq_align(path: str):
    """The vq-align model of a model.pt, in eval mode, and the file's other entries."""
    from ..models.vqalign import VQAlign, VQAlignConfig

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("task") != "vq-align":
        raise InputError(path, f"not a vq-align model (task {state.get('task')!r})", settings=["init_from"])
    weights = state["model"]
    # files written before the latents were whitened: their recipe, so they load and tokenize as trained
    before = {"standardize": "none", "latent_norm": True, "disc_norm": False, "decay": 0.99}
    config = {**(before if "standardize" not in state["model_config"] else {}), **state["model_config"]}
    model = VQAlign(VQAlignConfig(**config), weights["text_table"], weights["text_ids"])
    model.load_state_dict(weights)
    return model.eval(), state


def lm_finetune_task(cfg: TrainConfig) -> Task:
    from ..text.lm import build_lm
    from ..text.prompts import SharedVocab
    from ..text.tokenizer import TextTokenizer

    if not cfg.init_from:
        raise InputError(None, "task lm-finetune needs --init-from (model.pt of a vq-align run)", settings=["init_from"])
    vq, state = load_vq_align(cfg.init_from)
    tokenizer = (TextTokenizer.from_json(state["tokenizer"]) if state["tokenizer"]
                 else TextTokenizer.from_pretrained(state["text_model"]))
    vocab = SharedVocab(n_text=len(vq.text_table), n_codes=vq.n_tokens, bos=tokenizer.bos, eos=tokenizer.eos,
                        pad=tokenizer.pad)
    examples, max_new = _examples(cfg, vq, tokenizer, vocab)
    length = int(examples["ids"].map(len).max())
    model = build_lm(cfg.model, vocab, vq.text_table, vq.token_table(), n_positions=length,
                     text_model=state["text_model"], text_std=vq.config.text_std)
    train = examples[examples["split"] == "train"]
    train_mean = float(train.groupby("subject")["truth"].first().mean())
    return Task(
        model=model, train_set=SequenceDataset(train), val_set=SequenceDataset(examples[examples["split"] == "val"]),
        loss=lambda m, batch, noise: m(batch["x"], batch["attention_mask"], batch["labels"]).loss,
        n_noise=lambda x: 0,
        info={"tokenizer": state["tokenizer"], "text_model": state["text_model"], "train_mean": train_mean,
              "target": cfg.target, "text_prompt": _prompt_template(cfg), "n_text_tokens": vocab.n_text},
        finish=lambda m, out: _score(m, examples, vocab, tokenizer, train_mean, max_new, cfg, Path(out)),
    )


def _prompt_template(cfg: TrainConfig) -> str:
    return cfg.text_prompt or f"{cfg.target}:"


def _examples(cfg: TrainConfig, vq, tokenizer, vocab) -> tuple[pd.DataFrame, int]:
    """One row per window of a subject with a target: sample, subject, split, codes, prompt and answer
    tokens, truth, and the padded training sequence (ids, labels, mask); and the answer budget."""
    from ..datasets.regions import RegionWindowDataset, read_index
    from ..text.prompts import training_sequence
    from ..text.subjects import answer_text, subject_texts, template_columns

    if not cfg.participants or not cfg.target:
        raise InputError(None, "task lm-finetune needs --participants and --target (a participants.tsv column)",
                         settings=["participants", "target"])
    template = _prompt_template(cfg)
    if cfg.target in template_columns(template):
        raise InputError(None, f"the prompt {template!r} names the target column '{cfg.target}': it would give the answer away",
                         settings=["text_prompt"])
    truth = _numeric_target(cfg)
    prompts = subject_texts(cfg.participants, template=template)
    index = read_index(cfg.dataset)
    codes = _window_codes(vq, RegionWindowDataset(cfg.dataset, None), cfg.batch_size)
    rows = index.assign(codes=[codes[s] for s in index["sample"]]).loc[lambda t: t["subject"].map(truth).notna()]
    if rows.empty:
        raise InputError(cfg.participants, f"column '{cfg.target}' holds no number for any subject of the dataset",
                         settings=["target"])
    rows = rows.assign(truth=rows["subject"].map(truth).astype(float),
                       prompt=[tokenizer.encode(prompts[s]) for s in rows["subject"]])
    rows["answer"] = [tokenizer.encode(" " + answer_text(v)) for v in rows["truth"]]
    max_new = int(rows["answer"].map(len).max()) + 2
    length = int((rows["codes"].map(len) + rows["prompt"].map(len)).max()) + 1 + max_new
    built = [training_sequence(vocab, c, p, a, length) for c, p, a in zip(rows["codes"], rows["prompt"], rows["answer"])]
    rows["ids"], rows["labels"], rows["mask"] = ([b[k] for b in built] for k in range(3))
    return rows.reset_index(drop=True), max_new


def _numeric_target(cfg: TrainConfig) -> pd.Series:
    """Bare subject label -> the target as a number; NaN where the cell is empty or 'n/a' (that subject sits out)."""
    from ..datasets.participants import bare, read_participants

    table = read_participants(cfg.participants)
    if cfg.target not in table.columns:
        raise InputError(cfg.participants, f"participants table has no column '{cfg.target}' (columns: "
                         f"{list(table.columns)})", settings=["target"])
    text = table[cfg.target].fillna("").str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = text[(text != "") & values.isna()]
    if len(bad):
        raise InputError(cfg.participants, f"column '{cfg.target}' holds {sorted(set(bad))[:5]}: lm-finetune scores "
                         "numbers parsed from the answers, so the target must be numeric", settings=["target"])
    return pd.Series(values.to_numpy(dtype=float), index=[bare(p) for p in table["participant_id"]])


@torch.no_grad()
def _window_codes(vq, dataset, batch_size: int) -> dict[int, list[int]]:
    """Sample id -> the fMRI code of each patch of its window."""
    from torch.utils.data import default_collate

    found = {}
    for start in range(0, len(dataset), batch_size):
        batch = default_collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        for sample, codes in zip(batch["index"].tolist(), vq.tokenize(batch["x"]).tolist()):
            found[sample] = codes
    return found


def _score(model, examples: pd.DataFrame, vocab, tokenizer, train_mean: float, max_new: int, cfg: TrainConfig,
           out: Path) -> list[Path]:
    """Answers of the held-out subjects' windows, parsed and scored: answers.tsv (greedy, one a window),
    samples.tsv (ANSWER_SAMPLES draws a window), predictions.tsv and lm_metrics.tsv."""
    from ..io import write_tsv
    from ..text.prompts import parse_answers, prompt_ids
    from ..text.scoring import mae_against_mean, subject_medians, subject_predictions

    model.eval()
    held = examples[examples["split"].isin(HELD_OUT)].reset_index(drop=True)
    allowed = torch.zeros(vocab.size, dtype=torch.bool)
    allowed[tokenizer.ordinary_ids()] = True
    allowed[vocab.eos] = True
    prompts = [prompt_ids(vocab, c, p) for c, p in zip(held["codes"], held["prompt"])]
    texts = [tokenizer.decode(g) for g in model.greedy(prompts, allowed, vocab.eos, max_new)]
    parsed = parse_answers(texts)
    answers = held[["sample", "subject", "split", "truth"]].assign(answer=[visible(t) for t in texts], parsed=[
        np.nan if v is None else v for v in parsed.values])
    samples = _sampled_answers(model, prompts, held, allowed, vocab, tokenizer, max_new, cfg.seed)
    greedy = subject_predictions(answers).rename(columns={"prediction": "greedy_prediction",
                                                          "unparseable": "greedy_unparseable"})
    per = subject_medians(samples).merge(greedy.drop(columns="truth"), on="subject").merge(
        held.groupby("subject")["split"].first().reset_index(), on="subject")
    per["ridge_prediction"] = _ridge_on_codes(examples, per["subject"], vocab.n_codes)
    base = {"target": cfg.target, "windows": len(held)}
    rows = []
    decoded = (("lm", "prediction", len(samples), int(samples["parsed"].isna().sum())),
               ("lm_greedy", "greedy_prediction", len(held), parsed.unparseable))
    for name, column, n_answers, unparseable in decoded:
        scored = per[per[column].notna()]
        rows.append({"predictor": name, **base, "answers": n_answers, "unparseable_answers": unparseable,
                     "subjects_without_answer": int(per[column].isna().sum()),
                     **mae_against_mean(scored["truth"], scored[column], train_mean, seed=cfg.seed)})
    rows.append({"predictor": "ridge_on_codes", **base, "answers": 0, "unparseable_answers": 0,
                 "subjects_without_answer": 0,
                 **mae_against_mean(per["truth"], per["ridge_prediction"], train_mean, seed=cfg.seed)})
    files = {"answers.tsv": answers, "samples.tsv": samples, "predictions.tsv": per,
             "lm_metrics.tsv": pd.DataFrame(rows)}
    for name, table in files.items():
        write_tsv(out / name, table)
    return [out / name for name in files]


# Answers drawn per held-out window. The MAE is minimised by the median of the predictive distribution,
# not by its mode, which greedy decoding approximates digit by digit (a model that had learnt only the
# answers' distribution wrote its mode for every held-out subject, 2.5-3.2 years further (MAE) than the
# median of its draws: benchmarks/README.md, vqalign_demo.py): a subject's answer is the median of all
# its windows' draws.
ANSWER_SAMPLES = 16


def _sampled_answers(model, prompts: list, held: pd.DataFrame, allowed: torch.Tensor, vocab, tokenizer, max_new: int,
                     seed: int) -> pd.DataFrame:
    """ANSWER_SAMPLES answers of each held-out window, drawn from a generator seeded by ``seed``:
    sample, subject, draw, answer and the number parsed from it (NaN when none)."""
    from ..text.prompts import parse_answers

    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 22]).generate_state(1)[0]))
    drawn = model.sample(prompts, allowed, vocab.eos, max_new, ANSWER_SAMPLES, generator)
    texts = [tokenizer.decode(d) for draws in drawn for d in draws]
    parsed = parse_answers(texts)
    return pd.DataFrame({"sample": np.repeat(held["sample"].to_numpy(), ANSWER_SAMPLES),
                         "subject": np.repeat(held["subject"].to_numpy(), ANSWER_SAMPLES),
                         "truth": np.repeat(held["truth"].to_numpy(), ANSWER_SAMPLES),
                         "draw": np.tile(np.arange(ANSWER_SAMPLES), len(held)), "answer": [visible(t) for t in texts],
                         "parsed": [np.nan if v is None else v for v in parsed.values]})


# A generated answer may hold any byte the tokenizer can decode, line breaks and tabs too, which a TSV
# cell cannot (a bare carriage return ends the row for pandas' reader): each ASCII control character is
# written as its Unicode control picture (U+2400 + code, DEL U+2421), lossless and never a digit, so the
# number parsed from the written answer is the one scored.
_CONTROL_PICTURES = {**{code: 0x2400 + code for code in range(32)}, 127: 0x2421}


def visible(text: str) -> str:
    r"""``text`` with its ASCII control characters as Unicode control pictures ("a\tb" -> "a\u2409b")."""
    return text.translate(_CONTROL_PICTURES)


def _ridge_on_codes(examples: pd.DataFrame, subjects: pd.Series, n_codes: int) -> np.ndarray:
    """Ridge regression (alpha by leave-one-out) on each subject's code histogram, fitted on the
    training subjects: a head on the same fMRI tokens as the language model's, without it."""
    from sklearn.linear_model import RidgeCV

    def histograms(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.groupby("subject")["codes"].apply(
            lambda c: np.bincount(np.concatenate(c.to_list()), minlength=n_codes) / sum(map(len, c)))

    train = examples[examples["split"] == "train"]
    x_train = np.stack(histograms(train).to_list())
    y_train = train.groupby("subject")["truth"].first().to_numpy()
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x_train, y_train)
    held = histograms(examples[examples["subject"].isin(set(subjects))])
    return ridge.predict(np.stack(held.loc[list(subjects)].to_list()))


__all__ = ["ANSWER_SAMPLES", "HELD_OUT", "VQ_FIELDS", "SequenceDataset", "load_vq_align", "lm_finetune_task",
           "visible", "vq_align_task", "vq_metrics"]
