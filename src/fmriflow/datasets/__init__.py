"""Model-ready datasets: region windows (``regions``), voxel frames (``voxels``) and the one
reader of ``participants.tsv`` (``participants``)."""
