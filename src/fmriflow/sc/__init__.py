"""Structural connectivity: connectomes from diffusion MRI (``connectome``: read, match, check,
transform, write) and the demo's simulated connectomes (``demo``)."""
