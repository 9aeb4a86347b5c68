"""Model-ready datasets: region windows (``regions``), voxel frames (``voxels``), the subject
splits both share (``splits``), their on-disk store (``store``) and the one reader of
``participants.tsv`` with the one target encoding (``participants``)."""
