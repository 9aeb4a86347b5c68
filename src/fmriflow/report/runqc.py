"""Run QC and Coverage sections: motion, exclusions with reasons, carpet plots, tSNR, A424 coverage.

Whole-run images (carpet plot, tSNR map) need a pass over the 4-D BOLD, so they are drawn
for a few runs only (``MAX_DETAIL_RUNS``): the excluded runs, worst mean FD first, then the
included run with the highest mean FD; the runs a reviewer looks at first. Every run's FD
trace comes from its confounds table, which is small. The BOLD is streamed a chunk of
volumes at a time and the carpet keeps a fixed subsample of in-mask voxels, so memory
stays at tens of MB whatever the run length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..io import open_nifti
from .figures import MAX_TICK_RUNS, boundaries, groups, run_ticks, wide
from .html import esc, fmt, not_run, plural, sources_html, table
from .inputs import QC_NUMBERS, config_get, read_table, require_file, subjects

PathLike = str | Path

MAX_DETAIL_RUNS = 4
CARPET_VOXELS = 2000  # in-mask voxels kept (every k-th, in atlas-group order) for a carpet plot
_TSNR_SLICES = 6  # axial slices of a tSNR map


def run_table(runs: pd.DataFrame, cov: dict[str, pd.DataFrame], run_qc: pd.DataFrame | None) -> pd.DataFrame:
    """One row per run (QC, coverage and the run_qc decision joined on the run label), sorted by label."""
    cov_rows = pd.DataFrame(
        [{"label": label, "min_coverage": t["coverage"].min(), "median_coverage": t["coverage"].median(),
          "n_dropped": int((~t["used"]).sum())} for label, t in cov.items()],
        columns=["label", "min_coverage", "median_coverage", "n_dropped"],
    )
    out = runs.merge(cov_rows, on="label", how="outer")
    if run_qc is not None:
        extra = [c for c in run_qc.columns if c not in out.columns or c == "label"]
        out = out.merge(run_qc[extra], on="label", how="left")
    out = out.sort_values("label", kind="stable")
    for col in (*QC_NUMBERS, "included", "exclusion_reasons", "median_tsnr", "fraction_censored"):
        if col not in out:
            out[col] = np.nan
    out["subject"] = subjects(out["label"])
    return out.reset_index(drop=True)


def dropped_regions(cov: dict[str, pd.DataFrame], regions: pd.DataFrame) -> pd.DataFrame:
    used = np.vstack([t["used"].to_numpy(dtype=bool) for t in cov.values()])
    coverage = np.vstack([t["coverage"].to_numpy(dtype=float) for t in cov.values()])
    out = regions.assign(n_dropped=(~used).sum(axis=0), min_coverage=coverage.min(axis=0),
                         median_coverage=np.median(coverage, axis=0))
    return out[out["n_dropped"] > 0].reset_index(drop=True)


def detail_runs(runs: pd.DataFrame, available: set[str]) -> list[tuple[str, str]]:
    """(label, why) of the runs drawn in full: excluded ones by mean FD, then the worst included."""
    runs = runs[runs["label"].isin(available)].sort_values(["mean_fd", "label"], ascending=[False, True], kind="stable")
    chosen = []
    excluded = runs[runs["included"].astype(str) == "False"]
    for r in excluded.itertuples(index=False):
        chosen.append((r.label, f"excluded: {r.exclusion_reasons}"))
    included = runs[runs["included"].astype(str) != "False"]
    if len(included):
        chosen.append((included["label"].iloc[0], "included run with the highest mean FD"))
    return chosen[:MAX_DETAIL_RUNS]


def qc_section(table_: pd.DataFrame, qc_paths, coverage_paths, run_qc_path, run_files, atlas_image, config,
               figures) -> str:
    headers = ["Run", "Subject", "Volumes", "TR (s)", "Mean FD (mm)", "Max FD (mm)", "High-motion volumes",
               "Mean std DVARS", "Median tSNR", "Min coverage", "Median coverage", "Regions dropped"]
    rows = [
        (r.label, r.subject, fmt(r.n_volumes, "d"), fmt(r.tr, ".3g"), fmt(r.mean_fd, ".3f"), fmt(r.max_fd, ".3f"),
         _high_motion(r.n_high_motion, r.fd_threshold), fmt(r.mean_std_dvars, ".3f"), fmt(r.median_tsnr, ".1f"),
         fmt(r.min_coverage, ".3f"), fmt(r.median_coverage, ".3f"), fmt(r.n_dropped, "d"))
        for r in table_.itertuples(index=False)
    ]
    tables = [*qc_paths, *coverage_paths, *([run_qc_path] if run_qc_path else [])]
    parts = [
        "<p>One row per run. FD is Power framewise displacement; a high-motion volume has FD above the "
        "run's threshold. tSNR is the median over brain voxels of the temporal mean over the temporal SD of the "
        "preprocessed BOLD. Coverage is the share of a region's atlas voxels inside the run's brain mask (from "
        "ready-made region time series: 1 where the region has data, 0 where it is n/a).</p>",
        table(headers, rows, table_id="qc-table", scroll=True),
        f'<div class="source">Tables: {sources_html(tables)}</div>',
        "<h3>Exclusions</h3>",
        _exclusions_html(table_, run_qc_path, config),
    ]
    fd = table_.sort_values("label")
    parts.append(figures.add(
        "qc-fd", lambda fig: _draw_fd(fig, fd), wide(len(fd)), 3.6,
        "Mean framewise displacement per run (bars; excluded runs in red), maximum FD (triangles) and the "
        "high-motion threshold.", [*qc_paths, *([run_qc_path] if run_qc_path else [])],
    ))
    confounds = {label: files["confounds"] for label, files in run_files.items() if files.get("confounds")}
    if confounds:
        traces = {label: _fd_trace(path) for label, path in sorted(confounds.items())}
        threshold = config_get(config, "denoise", "fd_threshold")
        parts.append(figures.add(
            "qc-fd-trace", lambda fig: _draw_fd_traces(fig, traces, fd, threshold), 10, 1.2 + 0.22 * len(traces),
            "Framewise displacement of every volume of every run (one row per run, excluded runs marked x)"
            + (f"; white dots: volumes above the censoring threshold {threshold:g} mm" if threshold else "") + ".",
            [confounds[k] for k in sorted(confounds)],
        ))
    if run_qc_path and table_["median_tsnr"].notna().any():
        parts.append(figures.add(
            "qc-tsnr", lambda fig: _draw_tsnr_bars(fig, fd, config_get(config, "qc", "min_tsnr")), wide(len(fd)), 3.0,
            "Median temporal SNR of the preprocessed BOLD per run (bars; excluded runs in red) and the "
            "qc.min_tsnr threshold when set.", [run_qc_path],
        ))
    parts.append(_detail_html(table_, run_files, atlas_image, config, figures))
    return "\n".join(parts)


def _exclusions_html(table_: pd.DataFrame, run_qc_path, config) -> str:
    if run_qc_path is None:
        return not_run("run QC and exclusion", "no run QC table was given")
    excluded = table_[table_["included"].astype(str) == "False"]
    thresholds = {k: v for k, v in (config_get(config, "qc") or {}).items() if v is not None}
    listed = ", ".join(f"{k} {v}" for k, v in thresholds.items()) or "none set"
    text = (f"<p>{plural(len(excluded), 'run')} of {len(table_)} excluded by the <code>qc:</code> thresholds "
            f"({esc(listed)}); excluded runs do not reach "
            f"the group connectivity, the model-ready dataset or any model (<code>{esc(run_qc_path)}</code>).</p>")
    if excluded.empty:
        return text
    rows = [(r.label, r.subject, r.exclusion_reasons) for r in excluded.itertuples(index=False)]
    return text + table(["Run", "Subject", "Reasons"], rows, table_id="exclusions")


def _detail_html(table_: pd.DataFrame, run_files: Mapping, atlas_image, config, figures) -> str:
    complete = {label for label, f in run_files.items() if all(f.get(k) for k in ("confounds", "bold", "mask", "denoised"))}
    if not complete:
        return not_run("carpet plots and tSNR maps", "no run's BOLD, mask, denoised BOLD and confounds were given")
    chosen = detail_runs(table_, complete)
    parts = [f"<h3>Carpet plots and tSNR maps</h3><p>These read the whole 4-D BOLD, so they are drawn for at most "
             f"{MAX_DETAIL_RUNS} runs: the excluded runs (worst mean FD first) and the included run with the highest "
             "mean FD. Carpet: every in-mask voxel would be too many rows, so a fixed subsample of up to "
             f"{CARPET_VOXELS} voxels is shown"
             + (", ordered by A424 region group (cortex, subcortex, cerebellum; voxels outside the atlas last)"
                if atlas_image else ", in voxel order")
             + ", each z-scored over time.</p>"]
    for label, why in chosen:
        files = run_files[label]
        data = _run_images(files, atlas_image)
        threshold = config_get(config, "denoise", "fd_threshold")
        parts.append(figures.add(
            f"qc-run-{label.lower()}", lambda fig, d=data: _draw_run(fig, d, threshold), 11, 5.2,
            f"Run {label} ({why}): FD trace, carpet plot of the denoised BOLD ({data['n_carpet']} of "
            f"{data['n_mask']} in-mask voxels) and tSNR of the preprocessed BOLD (median {data['median_tsnr']:.1f}).",
            [files["confounds"], files["denoised"], files["bold"], files["mask"], *([atlas_image] if atlas_image else [])],
        ))
    return "\n".join(parts)


def coverage_section(cov, regions, dropped, coverage_paths, config, figures) -> str:
    matrix = np.vstack([cov[label]["coverage"].to_numpy(dtype=float) for label in sorted(cov)])
    threshold = config_get(config, "parcellate", "min_coverage")
    parts = [figures.add(
        "coverage", lambda fig: _draw_coverage(fig, matrix, sorted(cov), regions, threshold), 10, 6.5,
        "Atlas region coverage across runs: median with min-max band per region label (top) and every run (bottom).",
        coverage_paths,
    )]
    if dropped.empty:
        parts.append("<p>No region was dropped in any run.</p>")
    else:
        parts.append(f"<p>{plural(len(dropped), 'region')} dropped (NaN in the region time series, coverage "
                     "below the threshold) in at least one run.</p>")
        rows = [(int(r.index), r.name, f"{r.n_dropped} / {len(cov)}", fmt(r.min_coverage, ".3f"),
                 fmt(r.median_coverage, ".3f")) for r in dropped.itertuples(index=False)]
        parts.append(table(["Label", "Region", "Runs dropped", "Min coverage", "Median coverage"], rows,
                           table_id="dropped-regions", scroll=True))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- numbers


def _fd_trace(path: PathLike) -> np.ndarray:
    """A run's FD per volume (NaN for the first, which has none)."""
    frame = read_table(path, ["framewise_displacement"])
    return pd.to_numeric(frame["framewise_displacement"], errors="coerce").to_numpy(dtype=float)


def _run_images(files: Mapping[str, PathLike], atlas_image: PathLike | None) -> dict:
    """FD trace, carpet rows (z-scored subsample of in-mask voxels) and the tSNR volume of one run."""
    from ..parcellate import BoldChunks  # the chunked reader parcellation uses: one chunk in memory at a time

    mask = np.asarray(open_nifti(require_file(files["mask"])).dataobj) > 0
    flat_mask = mask.reshape(-1, order="F")
    in_mask = np.flatnonzero(flat_mask)
    order = in_mask
    group_sizes: list[int] = []
    if atlas_image is not None:
        labels = np.rint(np.asarray(open_nifti(require_file(atlas_image)).dataobj)).astype(int).reshape(-1, order="F")
        if labels.size == flat_mask.size:
            group_of = np.digitize(labels[in_mask], [1, 361, 397, 425])  # 1 cortex, 2 subcortex, 3 cerebellum, else 0/4
            rank = np.where((group_of >= 1) & (group_of <= 3), group_of, 4)
            order = in_mask[np.argsort(rank, kind="stable")]
            group_sizes = [int((rank == g).sum()) for g in (1, 2, 3, 4)]
    step = max(1, int(np.ceil(len(order) / CARPET_VOXELS)))
    keep = order[::step]

    rows = []
    for _, chunk in BoldChunks(require_file(files["denoised"])).chunks():
        rows.append(chunk[:, keep].astype(np.float32))
    carpet = np.concatenate(rows).T  # (voxels, time)
    sd = carpet.std(axis=1, keepdims=True)
    carpet = (carpet - carpet.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)

    source = BoldChunks(require_file(files["bold"]))
    total = np.zeros(len(in_mask))
    squares = np.zeros(len(in_mask))
    for _, chunk in source.chunks():
        block = chunk[:, in_mask].astype(np.float64) * source.slope + source.inter
        total += block.sum(axis=0)
        squares += (block ** 2).sum(axis=0)
    n = source.n_volumes
    mean = total / n
    var = np.maximum(squares - n * mean ** 2, 0.0) / max(n - 1, 1)
    sd_t = np.sqrt(var)
    tsnr_values = np.where(sd_t > 0, mean / np.where(sd_t > 0, sd_t, 1.0), np.nan)
    tsnr = np.full(flat_mask.size, np.nan)
    tsnr[in_mask] = tsnr_values
    tsnr = tsnr.reshape(mask.shape, order="F")
    return {"fd": _fd_trace(files["confounds"]), "carpet": carpet, "tsnr": tsnr, "mask": mask,
            "n_carpet": len(keep), "n_mask": len(in_mask), "median_tsnr": float(np.nanmedian(tsnr_values)),
            "groups": [int(np.ceil(s / step)) if s else 0 for s in group_sizes]}


# ----------------------------------------------------------------------------- drawing


def _excluded(runs: pd.DataFrame) -> np.ndarray:
    return (runs["included"].astype(str) == "False").to_numpy()


def _draw_fd(fig, runs: pd.DataFrame) -> None:
    ax = fig.subplots()
    x = np.arange(len(runs))
    colours = np.where(_excluded(runs), "#cf222e", "#4c72b0")
    ax.bar(x, runs["mean_fd"].to_numpy(dtype=float), color=colours, label="mean FD")
    ax.scatter(x, runs["max_fd"].to_numpy(dtype=float), marker="v", color="#dd8452", zorder=3, label="max FD")
    thresholds = runs["fd_threshold"].dropna().unique() if "fd_threshold" in runs else []
    for t in sorted(thresholds):
        ax.axhline(t, ls="--", lw=1, color="#555555", label=f"threshold {t:g} mm")
    run_ticks(ax, runs["label"].tolist())
    ax.set_ylabel("framewise displacement (mm)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, frameon=False, fontsize=8)


def _draw_fd_traces(fig, traces: dict[str, np.ndarray], runs: pd.DataFrame, threshold) -> None:
    labels = list(traces)
    length = max(len(t) for t in traces.values())
    matrix = np.full((len(labels), length), np.nan)
    for k, label in enumerate(labels):
        matrix[k, :len(traces[label])] = traces[label]
    ax = fig.subplots()
    import matplotlib

    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#eeeeee")
    vmax = max(float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0, threshold or 0.0, 1e-6)
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=vmax)
    if threshold:
        rows, cols = np.nonzero(np.nan_to_num(matrix) > threshold)
        ax.scatter(cols, rows, s=4, color="white", edgecolors="none")
    excluded = set(runs.loc[_excluded(runs), "label"])
    names = [f"x {label}" if label in excluded else label for label in labels]
    run_ticks(ax, names, axis="y")
    ax.set_xlabel("volume")
    fig.colorbar(image, ax=ax, label="FD (mm)", shrink=0.9)


def _draw_tsnr_bars(fig, runs: pd.DataFrame, threshold) -> None:
    ax = fig.subplots()
    x = np.arange(len(runs))
    ax.bar(x, runs["median_tsnr"].to_numpy(dtype=float), color=np.where(_excluded(runs), "#cf222e", "#55a868"))
    if isinstance(threshold, (int, float)):
        ax.axhline(threshold, ls="--", lw=1, color="#555555", label=f"qc.min_tsnr {threshold:g}")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, fontsize=8)
    run_ticks(ax, runs["label"].tolist())
    ax.set_ylabel("median tSNR")
    ax.set_ylim(bottom=0)


def _draw_run(fig, data: dict, threshold) -> None:
    grid = fig.add_gridspec(2, 2, width_ratios=[2.4, 1], height_ratios=[1, 3])
    ax_fd = fig.add_subplot(grid[0, 0])
    ax_carpet = fig.add_subplot(grid[1, 0])
    ax_tsnr = fig.add_subplot(grid[:, 1])
    fd = data["fd"]
    ax_fd.plot(np.arange(len(fd)), fd, color="#4c72b0", lw=1)
    if threshold:
        ax_fd.axhline(threshold, ls="--", lw=1, color="#cf222e", label=f"censoring {threshold:g} mm")
        ax_fd.legend(loc="upper right", fontsize=7, frameon=False)
    ax_fd.set_xlim(-0.5, len(fd) - 0.5)
    ax_fd.set_ylim(bottom=0)
    ax_fd.set_ylabel("FD (mm)")
    ax_fd.tick_params(labelbottom=False)
    carpet = data["carpet"]
    ax_carpet.imshow(carpet, aspect="auto", interpolation="nearest", cmap="gray", vmin=-2, vmax=2)
    edge = 0
    for size, name in zip(data["groups"], ("cortex", "subcortex", "cerebellum", "other")):
        if size and size >= 0.06 * len(carpet):  # a label on a thin band would overlap its neighbours
            ax_carpet.text(-0.01, 1 - (edge + size / 2) / max(len(carpet), 1), name, transform=ax_carpet.transAxes,
                           ha="right", va="center", fontsize=7, rotation=90)
        if size:
            edge += size
            if edge < len(carpet):
                ax_carpet.axhline(edge - 0.5, color="#dd8452", lw=0.8)
    ax_carpet.set_yticks([])
    ax_carpet.set_xlabel("volume of the denoised BOLD")
    tsnr, mask = data["tsnr"], data["mask"]
    z_in = np.flatnonzero(mask.any(axis=(0, 1)))
    picks = np.linspace(z_in[0], z_in[-1], _TSNR_SLICES + 2)[1:-1].round().astype(int) if len(z_in) else []
    tiles = [np.rot90(tsnr[:, :, z]) for z in picks]
    mosaic = np.concatenate([np.concatenate(tiles[i:i + 2], axis=1) for i in range(0, len(tiles), 2)], axis=0) \
        if tiles else np.full((2, 2), np.nan)
    finite = tsnr[np.isfinite(tsnr)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    import matplotlib

    image = ax_tsnr.imshow(mosaic, cmap=matplotlib.colormaps["viridis"].with_extremes(bad="black"), vmin=0,
                           vmax=vmax, interpolation="nearest")
    ax_tsnr.set_axis_off()
    ax_tsnr.set_title("tSNR, axial slices z=" + ",".join(str(int(z)) for z in picks), fontsize=8)
    fig.colorbar(image, ax=ax_tsnr, label="tSNR", shrink=0.8)


def _draw_coverage(fig, matrix: np.ndarray, labels: list[str], regions: pd.DataFrame, threshold) -> None:
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.4])
    x = regions["index"].to_numpy(dtype=float)
    top.fill_between(x, matrix.min(axis=0), matrix.max(axis=0), step="mid", color="#c6dbef",
                     label="min-max across runs")
    top.step(x, np.median(matrix, axis=0), where="mid", color="#08519c", lw=0.8, label="median")
    if isinstance(threshold, (int, float)):
        top.axhline(threshold, ls="--", lw=1, color="#a50f15", label=f"min_coverage {threshold:g}")
    top.set_ylim(0, 1.02)
    top.set_ylabel("coverage")
    top.legend(loc="lower left", fontsize=7)
    image = bottom.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                          extent=(x[0] - 0.5, x[-1] + 0.5, len(labels) - 0.5, -0.5))
    if len(labels) <= MAX_TICK_RUNS:
        bottom.set_yticks(np.arange(len(labels)), labels, fontsize=6)
    else:
        bottom.set_ylabel(f"{len(labels)} runs")
    bottom.set_xlabel("A424 region label")
    fig.colorbar(image, ax=bottom, label="coverage", shrink=0.9)
    for ax in (top, bottom):
        for boundary in boundaries(len(x)):
            ax.axvline(boundary + 0.5, color="white" if ax is bottom else "#777777", lw=0.8)
    for name, start, stop in groups(len(x)):
        top.text((start + stop) / 2, 1.01, name, ha="center", va="bottom", fontsize=7, transform=top.get_xaxis_transform())


def _high_motion(n, threshold) -> str:
    text = fmt(n, "d")
    return text if pd.isna(threshold) else f"{text} (FD > {float(threshold):g} mm)"
