"""Structural connectivity: connectomes from diffusion MRI (``connectome``: read, match, check,
transform, write), the demo's simulated connectomes (``demo``), and making them from raw DWI
with QSIPrep + QSIRecon (``qsiprep``: the container commands; ``qsirecon``: the atlas dataset
QSIRecon reads, the record of QSIPrep's outputs, the connectome collected for ``sc_connectome``)."""
