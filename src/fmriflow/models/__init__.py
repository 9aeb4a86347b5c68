"""PyTorch models of fmriflow: one model per module, each runnable on CPU at toy size.

- ``brainlm``: BrainLM-style masked autoencoder on A424 region time series.
- ``brainsymphony``: BrainSymphony, fMRI streams + Perceiver, signed graph transformer on structural connectivity, gated fusion.
- ``brainmt``: BrainMT, hybrid bidirectional-Mamba / transformer on 4-D fMRI (and its attention-only twin).
- ``neurostorm``, ``neurostorm_mae``: NeuroSTORM, shifted-window Mamba on 4-D fMRI; prompt tuning; masked pretraining.
- ``ssm``: the Mamba-1 selective scan and block in plain PyTorch, and the dispatch to mamba-ssm's kernels.
- ``layers``, ``windows``: shared transformer blocks; 4-D window helpers.
- ``grids``: each voxel model's input grid (torch-free, read by the workflow at plan time).
"""

# BrainLM's names are served lazily, so that torch-free submodules (``grids``) can be imported
# at plan time without importing torch.
__all__ = ["CONFIGS", "BrainLM", "BrainLMConfig", "BrainLMOutput", "create_model", "model_flops_per_sample"]


def __getattr__(name: str):
    if name in __all__:
        from . import brainlm

        return getattr(brainlm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
