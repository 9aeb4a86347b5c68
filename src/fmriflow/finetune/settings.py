"""The ``finetune`` config section as typed, frozen settings, read in one place.

``FinetuneSettings.from_config(section)`` is the only reader of the section: the library
takes the dataclass. Every default equals the default of ``workflow/schemas/config.schema.yaml``
(finetune section; a test holds them together), so a section that lacks a key gets what the
schema would have filled in. The sizing keys (``enabled``, ``setups``, ``gpus``, ``mem_mb``,
``runtime``) place the job and are not settings. The section itself is kept as given, only
for the provenance sidecars (``provenance()``), which record it as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TrainSettings:
    """How one variant is trained (``fmriflow.finetune.trainer.fit``)."""

    device: str = "cpu"
    embed_dim: int = 256
    resnet_width: int = 64
    batch_size: int = 16
    max_epochs: int = 50
    min_epochs: int = 0  # epochs before early stopping and checkpoint selection start
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2


@dataclass(frozen=True)
class FinetuneSettings:
    """One set-up's protocol: cohort, folds, variants, controls, attribution, metrics, training."""

    # who is labelled, and how set-ups are drawn (fmriflow.finetune.cohort)
    target: str | None = None  # the participants.tsv column (the workflow refuses fine-tuning without one)
    task: str = "auto"  # auto | classification | regression
    missing_labels: str = "error"  # error | drop
    drug_column: str | None = None
    site_column: str | None = None
    # cross-validation: outer folds per repeat, inner validation share for early stopping
    folds: int = 5
    repeats: int = 3
    val_fraction: float = 0.2
    # what runs on every fold
    variants: tuple[str, ...] = ("concat", "sum", "cross_attention", "moe", "ts_only", "fc_only", "no_pretrain")
    baselines: tuple[str, ...] = ("logistic", "ridge")
    probe: bool = True  # frozen probes of the pretrained and the random encoder (fmriflow.finetune.probe)
    # FMMTC variants on each released model's recipe embeddings (config recipes), rows <variant>_<name>
    # (fmriflow.finetune.recipe_fusion)
    recipe_variants: tuple[str, ...] = ("concat", "ts_only")
    permuted_control: bool = True
    permutations: int = 5  # label permutations per fold and controlled model
    staged_fusion: bool = False
    attribution: bool = True  # integrated gradients of concat, agnostic set-up only
    ig_steps: int = 32
    seed: int = 0
    bootstrap: int = 1000  # bootstrap draws of each metric's CI
    train: TrainSettings = field(default_factory=TrainSettings)
    # the section as given, for the sidecars only (never read for a setting)
    section: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> FinetuneSettings:
        """Settings of a ``finetune`` config section; keys it lacks take the schema's defaults."""
        own = {f.name for f in dataclasses.fields(cls)} - {"train", "section"}
        trained = {f.name for f in dataclasses.fields(TrainSettings)}
        values = {k: _frozen(section[k]) for k in own if k in section}
        train = TrainSettings(**{k: section[k] for k in trained if k in section})
        return cls(**values, train=train, section=dict(section))

    def as_config(self) -> dict[str, Any]:
        """The settings as a flat ``finetune`` section (schema key names)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("train", "section")}
        return {**own, **dataclasses.asdict(self.train)}

    def provenance(self) -> dict[str, Any]:
        """What the sidecars record as ``Config``: the section as given, else the settings."""
        return dict(self.section) if self.section is not None else self.as_config()


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
