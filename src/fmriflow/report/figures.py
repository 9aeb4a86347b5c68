"""Figures of the report: drawn on their own Agg canvas, embedded as PNG data URIs.

Figures use matplotlib's default style whatever the user's matplotlibrc or pyplot backend
says, at a fixed DPI, and their PNGs carry no software or date chunk, so the same inputs
give the same bytes. Each figure has a stable id (its file name when the figures are also
written out for ``snakemake --report``) and a caption that names its source artefacts.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_path
from .html import esc, sources_html

PathLike = str | Path

DPI = 100  # fixed, so that figure bytes do not depend on the machine's defaults
MAX_TICK_RUNS = 40  # beyond this many runs, per-run tick labels are left out of figures

# A424 label ranges (see atlas.py), drawn as boundaries on matrices and coverage plots.
A424_GROUPS = (("Cortex R", 1, 180), ("Cortex L", 181, 360), ("Subcortex", 361, 396), ("Cerebellum", 397, 424))
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class Figures:
    """Numbers the figures of the page, records their ids, captions and sources.

    Parameters
    ----------
    out_dir : path, optional
        Also write every figure there as ``<id>.png`` with a provenance sidecar listing
        its sources (the files ``snakemake --report`` shows).
    """

    def __init__(self, out_dir: PathLike | None = None) -> None:
        self.items: list[dict] = []
        self.out_dir = Path(out_dir) if out_dir is not None else None

    def add(self, fig_id: str, draw: Callable, width: float, height: float, caption: str,
            sources: Sequence[PathLike], layout: str | None = "constrained") -> str:
        if not _ID.match(fig_id) or any(item["id"] == fig_id for item in self.items):
            raise ValueError(f"figure id {fig_id!r} must be new and in lower case letters, digits, '_', '.', '-'")
        number = len(self.items) + 1
        names = [str(s) for s in sources]
        data = png(draw, width, height, layout)
        self.items.append({"number": number, "id": fig_id, "caption": caption, "sources": names})
        if self.out_dir is not None:
            self._write(fig_id, data, names)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return (
            f'<figure id="figure-{number}" data-figure="{esc(fig_id)}"><img alt="{esc(caption)}" src="{uri}">'
            f"<figcaption><b>Figure {number}.</b> {esc(caption)} Drawn from: {sources_html(names)}</figcaption></figure>"
        )

    def _write(self, fig_id: str, data: bytes, sources: list[str]) -> None:
        from ..provenance import write_sidecar

        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{fig_id}.png"
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        write_sidecar(path, "report", sources)


def png(draw: Callable, width: float, height: float, layout: str | None = "constrained") -> bytes:
    """Draw a figure with ``draw(fig)`` and return its PNG bytes.

    The figure lives on its own Agg canvas (no pyplot, so nothing global to switch or
    close); matplotlib's default style replaces the user's rc so bytes are reproducible.
    ``layout=None`` for figures that place their own axes (nilearn's brain displays).
    """
    import matplotlib.style
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"), rc_context({"font.size": 9, "axes.titlesize": 10}):
        fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
        FigureCanvasAgg(fig)
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    return buffer.getvalue()


def draw_matrix(fig, matrix: np.ndarray, regions: pd.DataFrame, *, vmax: float, label: str) -> None:
    """A region x region matrix in label order, with lines between the A424 region groups."""
    import matplotlib

    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#bdbdbd")
    image = ax.imshow(matrix, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    for boundary in boundaries(len(matrix)):
        ax.axhline(boundary - 0.5, color="black", lw=0.6)
        ax.axvline(boundary - 0.5, color="black", lw=0.6)
    group_list = groups(len(matrix))
    if group_list:
        centres = [(start + stop) / 2 - 1 for _, start, stop in group_list]
        names = [name for name, _, _ in group_list]
        ax.set_xticks(centres, names, fontsize=8, rotation=90)
        ax.set_yticks(centres, names, fontsize=8)
    else:
        ax.set_xlabel("region (label order)")
        ax.set_ylabel("region (label order)")
    fig.colorbar(image, ax=ax, label=label, shrink=0.85)


def run_ticks(ax, labels: list[str], axis: str = "x") -> None:
    """Per-run tick labels when there are few runs; a count otherwise."""
    positions = np.arange(len(labels))
    if len(labels) <= MAX_TICK_RUNS:
        if axis == "x":
            ax.set_xticks(positions, labels, rotation=90, fontsize=7)
        else:
            ax.set_yticks(positions, labels, fontsize=7)
    else:
        (ax.set_xticks if axis == "x" else ax.set_yticks)([])
        (ax.set_xlabel if axis == "x" else ax.set_ylabel)(f"{len(labels)} runs, in run-label order")


def groups(n_regions: int) -> tuple:
    return A424_GROUPS if n_regions == A424_GROUPS[-1][2] else ()


def boundaries(n_regions: int) -> list[int]:
    """The last label of every group but the last one: a boundary line is drawn just after each."""
    return [stop for _, _, stop in groups(n_regions)[:-1]]


def groups_text(n_regions: int) -> str:
    group_list = groups(n_regions)
    return " (lines: " + ", ".join(f"{n} {a}-{b}" for n, a, b in group_list) + ")" if group_list else ""


def wide(n_runs: int) -> float:
    return float(min(14.0, max(6.0, 0.22 * n_runs + 2.0)))


def robust_max(matrix: np.ndarray) -> float:
    off = matrix[~np.eye(matrix.shape[0], dtype=bool)] if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] else matrix
    off = np.abs(off[np.isfinite(off)])
    return float(off.max()) if off.size and off.max() > 0 else 1.0
