"""Each voxel-level model's input grid (voxels per frame, X x Y x Z).

Torch-free on purpose: the workflow reads it when it plans the DAG (which voxel datasets to
build), and the model configs take their default ``img_size`` from it, so both agree.
"""

from __future__ import annotations

INPUT_GRIDS: dict[str, tuple[int, int, int]] = {
    "brainmt": (91, 109, 91),  # the A424 / MNI152NLin6Asym 2 mm grid as it is
    "neurostorm": (96, 96, 96),  # that grid cropped / padded to a multiple of its 6-voxel patches
}


def grid_label(shape: tuple[int, ...]) -> str:
    """(91, 109, 91) -> "91x109x91", the grid's name in folder names."""
    return "x".join(str(int(n)) for n in shape)


def parse_grid_label(label: str) -> tuple[int, ...]:
    """"91x109x91" -> (91, 109, 91)."""
    return tuple(int(n) for n in label.split("x"))
