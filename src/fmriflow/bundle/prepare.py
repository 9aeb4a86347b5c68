"""A fine-tuning project's dataset, prepared by an encoder bundle's card.

``prepare_step`` is the ``dataset`` step of a project with ``finetune.encoder``: it refuses a
project atlas other than the card's, takes the window and TR from the card (the project's
``dataset.window`` and ``dataset.target_tr`` give way, with a warning where they differ), and
scales with the card's statistics (``finetune.scaling: card``) or with statistics refitted on
this project's training subjects (``refit``). Preprocessing that differs from the card's is
reported in the job's log, not refused: the project may have reasons (another scanner, another
confound model) that only its authors can weigh.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from ..io import sha256sum
from ..steps import dataset_step
from .card import card_scaling, check_atlas, input_settings, read_card

log = logging.getLogger("fmriflow")

SCALING_MODES = ("card", "refit")


def prepare_step(card_path: str, atlas_name: str, atlas_image: str | None, atlas_labels: str, runs: Sequence[str],
                 timeseries: Sequence[str], participants: str, out_card: str, *, config: Mapping[str, Any]) -> None:
    """The dataset of this project's runs, prepared as the card says.

    ``config``: the sections that shape it (``dataset``, ``finetune.scaling``; ``preproc.mode``,
    ``denoise`` and ``parcellate`` to compare with the card's).
    """
    card = read_card(card_path)
    check_atlas(card, card_path, atlas_name, atlas_image, atlas_labels)
    mode = config["finetune"]["scaling"]
    if mode not in SCALING_MODES:
        raise ValueError(f"'finetune.scaling' must be one of {SCALING_MODES}; {mode!r} was provided")
    settings = input_settings(card)
    section = dict(config["dataset"])
    for key, value in settings.items():
        if section[key] is not None and section[key] != value:  # a target_tr of null asks for nothing
            log.warning("dataset.%s is %r, but the encoder (%s) was pretrained with %r: using the card's value",
                        key, section[key], card_path, value)
    log.info("windows of %d time points at TR %s s, as the encoder's card %s says", settings["window"],
             settings["target_tr"] if settings["target_tr"] is not None else "(each run's own)", card_path)
    section.update(settings)
    for difference in preprocessing_differences(card["preprocessing"], config):
        log.warning("this project's %s; the encoder's pretraining data were prepared otherwise (%s)", difference, card_path)
    source = f"the model card {card_path} (sha256 {sha256sum(card_path)}): the encoder's pretraining statistics"
    scaling = card_scaling(card) if mode == "card" else None
    dataset_step(runs, timeseries, participants, out_card, **section, scaling=scaling,
                 scaling_source=source if mode == "card" else None)


def preprocessing_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any], where: str = "") -> list[str]:
    """``key is X, the card's Y`` for each preprocessing setting both hold and that differs."""
    found = []
    for key, value in theirs.items():
        if key not in ours:
            continue
        if isinstance(value, Mapping) and isinstance(ours[key], Mapping):
            found += preprocessing_differences(value, ours[key], f"{where}{key}.")
        elif value != ours[key]:
            found.append(f"{where}{key} is {ours[key]!r}, the card's {value!r}")
    return found
