"""PyTorch models of fmriflow: one model per module, each runnable on CPU at toy size.

- ``brainlm``: BrainLM-style masked autoencoder on A424 region time series.
- ``brainmt``: BrainMT, hybrid bidirectional-Mamba / transformer on 4-D fMRI (and its attention-only twin).
- ``neurostorm``, ``neurostorm_mae``: NeuroSTORM, shifted-window Mamba on 4-D fMRI; prompt tuning; masked pretraining.
- ``ssm``: the Mamba-1 selective scan and block in plain PyTorch, and the dispatch to mamba-ssm's kernels.
- ``layers``, ``windows``: shared transformer blocks; 4-D window helpers.
"""

from fmriflow.models.brainlm import (
    CONFIGS,
    BrainLM,
    BrainLMConfig,
    BrainLMOutput,
    create_model,
    model_flops_per_sample,
)

__all__ = ["CONFIGS", "BrainLM", "BrainLMConfig", "BrainLMOutput", "create_model",
           "model_flops_per_sample"]
