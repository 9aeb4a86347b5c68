"""Training of fmriflow's models: one loop (``loop``) for every model family (``tasks``)."""
