"""Encoder bundles: a pretrained encoder that another project, on another machine, can use
without the files of the project that pretrained it.

A bundle is a folder of three files:

``model.safetensors``
    the weights (safetensors: tensors only, nothing executed on load), the atlas coordinates
    included (the model's ``coords`` buffer).
``config.json``
    the architecture (``BrainLMConfig``), enough to rebuild the module.
``model_card.json``
    what is needed to prepare new data as the pretraining data were prepared (atlas name,
    sha256, region order and coordinates; window, patch size, TR and target TR; the scaling
    and its fitted per-region statistics; preprocessing mode and denoising), where the encoder
    came from (the pretraining data's fingerprint, training settings, final losses) and the
    fmriflow version. ``fmriflow model-card BUNDLE`` prints it.

Modules: ``card`` (building, checking and using a card), ``write`` (the pretraining project's
``bundle`` step), ``read`` (rebuilding the encoder), ``prepare`` (a fine-tuning project's
dataset step, by the card), ``show`` (the card for a person).
"""

from .card import CARD, CONFIG, FILES, WEIGHTS, read_card

__all__ = ["CARD", "CONFIG", "FILES", "WEIGHTS", "read_card"]
