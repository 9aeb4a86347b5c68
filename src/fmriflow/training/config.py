"""What a training run is: its settings (``TrainConfig``, also the command line), the tasks and
target kinds it accepts, the provenance step of each task (``SIDECAR_STEP``), the workflow config
section of each task (``CONFIG_SECTION``), which settings shape its result (``NOT_SHAPING``), and
what the loop needs from a model family (``Task``)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

TASKS = ("brainlm", "brainsymphony", "neurostorm-mae", "brainmt", "neurostorm", "vq-align", "lm-finetune")
TARGET_KINDS = ("classification", "regression")
# the step in the provenance sidecars of a task's outputs: the workflow rule that runs the task
# (workflow/rules/pretrain.smk, voxel.smk), so a fine-tuned model does not claim to be pretrained
SIDECAR_STEP = {"brainlm": "pretrain", "brainsymphony": "brainsymphony_pretrain", "neurostorm-mae": "voxel_pretrain",
                "brainmt": "voxel_finetune", "neurostorm": "voxel_finetune", "vq-align": "vq_align",
                "lm-finetune": "lm_finetune"}
# the workflow config section whose settings a task's rule passes on the command line (config/config.yaml),
# so an error about a setting can name the key the user wrote
CONFIG_SECTION = {"brainlm": "pretrain", "brainsymphony": "brainsymphony", "neurostorm-mae": "voxel.pretrain",
                  "brainmt": "voxel.brainmt", "neurostorm": "voxel.neurostorm", "vq-align": "text.vq_align",
                  "lm-finetune": "text.lm_finetune"}


@dataclass
class TrainConfig:
    dataset: str  # folder written by fmriflow.datasets.regions.build_dataset (voxel tasks: fmriflow.datasets.voxels)
    out: str  # run folder: checkpoint, metrics.csv, final model
    task: str = "brainlm"  # one of TASKS
    coords: str = ""  # brainlm: atlas look-up TSV with x, y, z columns (region order of the dataset)
    model: str = "tiny"  # a config name of the task's model (e.g. fmriflow.models.brainlm.CONFIGS)
    batch_size: int = 8  # global batch per optimiser step, split evenly across ranks
    max_steps: int = 200
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # end of the cosine decay
    warmup_steps: int = 20
    weight_decay: float = 0.05  # on matrices only, not biases or norms
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    checkpoint_every: int = 50
    eval_every: int = 50
    log_every: int = 10  # host syncs for metrics happen only this often
    num_workers: int = 2
    seed: int = 0
    compile: bool = False
    # voxel tasks
    window: int = 0  # frames per sample; 0: the model's max_frames
    stride: int = 0  # frames between window starts; 0: the window
    participants: str = ""  # brainmt / neurostorm: participants.tsv with the target column
    target: str = ""  # the column to predict
    target_kind: str = "classification"  # classification (cross-entropy) | regression (MSE on the standardised target)
    # neurostorm: model.pt of neurostorm-mae pretraining, whose encoder is loaded and frozen;
    # brainlm: an encoder bundle folder whose weights the run continues from (pretrain.init)
    init_from: str = ""
    atlas: str = ""  # brainlm with init_from: this project's atlas name, checked against the bundle's card
    prompt_len: int = 4  # neurostorm: prompt tokens per block
    grad_checkpoint: bool = False  # recompute blocks in the backward pass (voxel models)
    # brainsymphony
    modalities: str = "both"  # both (time series + connectomes) | fmri | sc
    sc_dir: str = ""  # folder of per-subject connectome TSVs (fmriflow.training.symphony)
    # fMRI-text alignment (vq-align, lm-finetune; fmriflow.training.text_tasks)
    text_template: str = ""  # subject text from participants.tsv columns, e.g. "sex: {sex}; age: {age}"
    text_column: str = ""  # or a free-text participants.tsv column
    text_model: str = ""  # a local pretrained tokenizer + causal LM folder ("": trained from scratch)
    align_weight: float = 0.5  # vq-align: final weight of the reversed domain gradient; 0: no domain classifier (ablation)
    restart_every: int = 20  # vq-align: steps between restarts of dead codes (0: never)
    # vq-align: the reversed gradient's weight is the schedule's x clamp(gain (2 acc - 1), 0, 1), acc the classifier's
    # running training accuracy: none at or below chance (fmriflow.models.vqalign.reversal_gate); 0: no gate
    reversal_gate: float = 2.0
    text_prompt: str = ""  # lm-finetune: the prompt after the fMRI tokens, a template over columns ("": "<target>:")

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"'task' must be one of {TASKS}; {self.task!r} was provided")
        if self.modalities not in ("both", "fmri", "sc"):
            raise ValueError(f"'modalities' must be one of ('both', 'fmri', 'sc'); {self.modalities!r} was provided")
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"'target_kind' must be one of {TARGET_KINDS}; {self.target_kind!r} was provided")

    @classmethod
    def from_args(cls, argv: list[str] | None = None, description: str | None = None) -> "TrainConfig":
        """The config of a command line; ``description`` heads ``--help`` (``fmriflow.training.loop`` gives its docstring)."""
        parser = argparse.ArgumentParser(prog="fmriflow-train", description=description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        for field in dataclasses.fields(cls):
            name = "--" + field.name.replace("_", "-")
            if field.type == "bool":
                parser.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default)
            elif field.name == "betas":
                parser.add_argument(name, type=float, nargs=2, default=field.default)
            elif field.default is dataclasses.MISSING:
                parser.add_argument(name, required=True)
            else:
                parser.add_argument(name, type=type(field.default), default=field.default)
        args = parser.parse_args(argv)
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in vars(args).items()})


# TrainConfig fields that say where or how fast a run goes, not what it computes: a checkpoint
# made under other values of these is still this run's
NOT_SHAPING = frozenset({"out", "checkpoint_every", "eval_every", "log_every", "num_workers", "compile"})


@dataclass
class Task:
    """What the loop needs from a model family; built by ``fmriflow.training.tasks.build_task``."""

    model: torch.nn.Module
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    loss: Callable[[torch.nn.Module, dict, torch.Tensor | None], torch.Tensor]  # (model or DDP, batch, noise) -> ()
    n_noise: Callable[[torch.Tensor], int]  # masking noise values per sample for a batch's x (0: none)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # more entries of model.pt
    # optional: called before each step's forward with the unwrapped model, the batch and the step (schedules)
    before_step: Callable[[torch.nn.Module, dict, int], None] | None = None
    # optional: more validation metrics (columns ``metric_fields`` of train_log.csv), from the unwrapped model
    metrics: Callable[[torch.nn.Module], dict[str, float]] | None = None
    metric_fields: tuple[str, ...] = ()
    # optional: more outputs written beside model.pt once training is complete; returns their paths
    finish: Callable[[torch.nn.Module, Any], list] | None = None
