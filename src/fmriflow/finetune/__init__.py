"""Fine-tuning and evaluation on a labelled cohort: FMMTC, its ablations and FC baselines.

``cohort``      labels, set-ups (drug-agnostic, drug-specific, cross-site) and subject folds
``features``    per-window FC and frozen-encoder embeddings, cached once for every variant
``trainer``     training with early stopping on an inner validation split
``attribution`` integrated gradients per modality and per region
``run``         one set-up end to end: every variant and baseline, predictions and metrics
"""
