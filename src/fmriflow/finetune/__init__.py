"""Fine-tuning and evaluation on a labelled cohort: FMMTC, its ablations and FC baselines.

``cohort``      labels, set-ups (drug-agnostic, drug-specific, cross-site) and subject folds
``features``    per-window FC and frozen-encoder embeddings, cached once for every variant
``settings``    the ``finetune`` config section as frozen settings (schema defaults)
``trainer``     training with early stopping on an inner validation split
``attribution`` integrated gradients per modality and per region
``probe``       frozen probes: the encoder's pooled embeddings into the baselines' linear models
``symphony``    BrainSymphony's frozen embeddings (fMRI only, SC only, fused) for the probe rows
``crossval``    one fold of a set-up: every variant and baseline, and the permuted-label controls
``pool``        the folds' units over worker processes, recorded in a fixed order
``ig_tables``   the attribution tables gathered over folds
``run``         the workflow steps: cached features, one set-up end to end, the variant table
"""
