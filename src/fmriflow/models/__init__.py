"""PyTorch models of fmriflow: one model per module, each runnable on CPU at toy size.

- ``brainlm``: BrainLM-style masked autoencoder on A424 region time series.
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
