"""Training of fmriflow's models: one loop (``loop``) for every model family (``tasks``), with its
settings (``config``), processes (``distributed``), data order and masks (``sampling``) and
checkpoints (``checkpoint``)."""
