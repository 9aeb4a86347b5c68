"""Where the encoder came from, in a fine-tuning project whose encoder was pretrained elsewhere
(``finetune.encoder``): its bundle's model card, summarised in the Pretraining section.

Everything shown is read from the bundle itself (``model_card.json``, and the sha256 of its three
files), so a reader can match the report to the bundle that another project published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..bundle.card import FILES, input_settings, read_card
from ..io import sha256sum
from .html import esc, sources_html, table
from .inputs import config_get

PathLike = str | Path
SCALING_HERE = {"card": "the card's statistics (finetune.scaling: card)",
                "refit": "refitted on this project's training split (finetune.scaling: refit)"}


def bundle_files(card_path: PathLike) -> list[Path]:
    """The bundle's files (weights, config, card) beside its ``model_card.json``."""
    return [Path(card_path).with_name(name) for name in FILES]


def encoder_html(card_path: PathLike, config) -> str:
    """The card's summary: provenance of the bundle, how data are prepared for it, what it was pretrained on."""
    card = read_card(card_path)
    rows = [*_identity_rows(card, card_path), *_input_rows(card, config), *_data_rows(card)]
    return "\n".join([
        "<p>Pretraining did not run in this project: it fine-tunes the encoder of the bundle "
        f"<code>{esc(Path(card_path).parent)}</code> (<code>finetune.encoder</code>), pretrained by another "
        "project. Its model card:</p>",
        table(["Field", "Value"], rows, table_id="encoder-card"),
        f'<div class="source">Bundle: {sources_html([str(p) for p in bundle_files(card_path)])}</div>',
    ])


def _identity_rows(card: Mapping[str, Any], card_path: PathLike) -> list[tuple[str, str]]:
    model = card["model"]
    return [
        ("fmriflow version", f"{card['fmriflow_version']} (card format {card['format_version']})"),
        *((f"sha256 of {p.name}", sha256sum(p)) for p in bundle_files(card_path)),
        ("Model", f"{model['architecture']} '{model['name']}', {model['n_parameters']:,} parameters"),
        ("Embedding", model["embedding"]),
    ]


def _input_rows(card: Mapping[str, Any], config) -> list[tuple[str, str]]:
    atlas, scaling, tr = card["atlas"], card["scaling"], card["input"]["tr"]
    here = config_get(config, "finetune", "scaling") or "card"
    stored = ", ".join(f"{t:g}" for t in tr["stored"])
    target = input_settings(card)["target_tr"]
    return [
        ("Atlas", f"{atlas['name']}, {atlas['n_regions']} regions, image sha256 "
                  f"{atlas['sha256'] or 'none (an atlas given as a table)'}"),
        ("Window and patch", f"{card['input']['window']} time points, patches of {card['input']['patch_size']}"),
        ("TR", f"pretraining data stored at {stored} s, target TR {tr['target_tr'] or 'none'}; this project's "
               f"windows at {'their own TR' if target is None else f'{target:g} s'}"),
        ("Scaling", f"{scaling['method']}: {scaling['formula']}"),
        ("Statistics fitted on", f"{scaling['fit_on']} ({scaling['n_timepoints']} time points); here: "
                                 f"{SCALING_HERE.get(here, here)}"),
        ("Preprocessing", json.dumps(card["preprocessing"], sort_keys=True)),
    ]


def _data_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    data, final = card["pretraining_data"], card["training"]["final"]
    return [
        ("Pretraining subjects", f"{data['subjects']} (sha256 of their labels {data['subjects_sha256']})"),
        ("Pretraining runs", f"{data['runs']} ({data['skipped_runs']} more too short for a window)"),
        ("Pretraining hours", ", ".join(f"{k} {v:.2f}" for k, v in data["hours"].items())),
        ("Pretraining manifest sha256", data["manifest_sha256"]),
        ("Final losses", f"train {_num(final['train_loss'])} (step {final['train_loss_step']}), validation "
                         f"{_num(final['val_loss'])} (step {final['val_loss_step']}), {final['steps']} steps"),
        ("Training settings", json.dumps(card["training"]["settings"], sort_keys=True)),
    ]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"
