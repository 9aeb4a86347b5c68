"""The ``report`` step: one self-contained HTML page summarising a run of the workflow.

The page opens offline: its CSS is inline and its figures are PNG data URIs; it links
to nothing. It is deterministic: the same inputs give the same bytes (no timestamps; see
``figures`` for how PNGs are made reproducible).

Sections (one module each): Summary and Dataset (``overview``), Run QC and Coverage
(``runqc``), Connectivity (``connectivity``), Pretraining and Fine-tuning (``modelling``),
Provenance (``provenance``). A section whose step did not run (disabled in the config, or
its inputs not given) says so instead of failing. Every figure's caption names the
artefact files it was drawn from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io import write_text
from . import inputs as read
from .connectivity import connectivity_section, recovery
from .encoder import bundle_files
from .figures import Figures
from .html import page
from .modelling import attribution_files, finetune_section, pretraining_section
from .overview import dataset_section, summary_section
from .provenance import provenance_section
from .runqc import coverage_section, dropped_regions, qc_section, run_table
from .text import text_section

__all__ = ["build_report"]

PathLike = str | Path
RUN_FILE_KINDS = ("confounds", "bold", "mask", "denoised")


def build_report(
    out_html: PathLike, *, participants: PathLike, manifest: PathLike, validation: PathLike,
    qc: Sequence[PathLike], coverage: Sequence[PathLike], group_fc: PathLike, group_diff: PathLike | None = None,
    ground_truth_edges: PathLike | None = None, config: Mapping[str, Any] | PathLike | None = None,
    run_qc: PathLike | None = None, run_files: Mapping[str, Mapping[str, PathLike]] | None = None,
    atlas_image: PathLike | None = None, atlas_labels: PathLike | None = None,
    pretrain_metrics: PathLike | None = None, voxel_metrics: Mapping[str, PathLike] | None = None,
    finetune_table: PathLike | None = None, predictions: Sequence[PathLike] = (), encoder_card: PathLike | None = None,
    figures_dir: PathLike | None = None, text: Mapping[str, PathLike] | None = None, title: str = "fmriflow report",
    recipes: Mapping[str, PathLike] | None = None) -> dict:
    """Write the HTML report of one workflow run (atomically) and return what it holds.

    Inputs (paths; a missing or unusable one is an InputError naming it):

    - ``participants``, ``manifest``, ``validation``: raw participants.tsv, the ``bids`` step's manifest TSV
      and validation JSON.
    - ``qc``, ``coverage``: the one-row preproc QC tables and per-run A424 coverage tables.
    - ``group_fc``, ``group_diff``: group-mean FC and (optionally) a group difference, whose JSON
      sidecar, if any, is shown; matrices go in atlas-label order by region name.
    - ``ground_truth_edges``: a demo's planted edges (``region_i``, ``region_j``, ``delta``), compared with the
      observed difference and ranked among all edges. ``config``: the resolved config (mapping or YAML/JSON
      path): provenance, and which steps were disabled ("not run").
    - ``run_qc``: the ``run_qc`` table. ``run_files``: run key or label -> ``confounds``
      (FD traces), ``bold`` and ``mask`` on the atlas grid (tSNR maps), ``denoised`` (carpet
      plots) of a few runs (see ``runqc``).
    - ``atlas_image``, ``atlas_labels``: the atlas on the BOLD grid (carpet row order) and its
      look-up table with ``x``, ``y``, ``z`` (top regions on a brain).
    - ``pretrain_metrics``, ``voxel_metrics`` (name -> path): training ``metrics.csv`` files.
    - ``finetune_table``, ``predictions``: ``variants.tsv`` and each set-up's ``predictions.tsv`` (attribution
      tables beside them are read when present); ``recipes``: each released model's ``recipe.json`` by name.
    - ``encoder_card``: ``finetune.encoder``'s ``model_card.json`` (its weights and config beside it): shown in
      the Pretraining section when this run pretrained nothing.
    - ``figures_dir``: also write every figure there as ``<id>.png`` with a provenance sidecar; ``text``:
      vq-align ``metrics.csv`` by run name, ``lm`` -> ``lm_metrics.tsv``: a Text alignment section.

    Returns ``path``, ``sections`` (ids), ``figures`` (number, id, caption, sources), ``inputs`` (every file
    read), ``n_subjects``, ``n_runs``, ``dropped_regions`` and ``ground_truth`` (recovery numbers, or None).
    """
    qc, coverage, run_files = _without_failed(qc, coverage, run_files or {})
    predictions = list(predictions)
    _check_arguments(qc, coverage, group_diff, ground_truth_edges)
    files_of_run = _run_files(run_files)
    data = _read_inputs(participants, manifest, validation, qc, coverage, run_qc, group_fc, group_diff,
                        ground_truth_edges, config)
    people, files, runs_table, cov, regions, config = (data[key] for key in ("people", "files", "runs_table", "cov",
                                                                             "regions", "config"))
    figures = Figures(figures_dir)
    rec = recovery(data["edges"], data["diff"]) if data["edges"] is not None else None
    dropped = dropped_regions(cov, regions)
    sections = [
        ("summary", "Summary", summary_section(people, files, data["checks"], runs_table, data["decisions"], dropped,
                                               config, validation, read.atlas_summary(atlas_labels))),
        ("dataset", "Dataset", dataset_section(people, participants, files, manifest)),
        ("run-qc", "Run QC", qc_section(runs_table, qc, coverage, run_qc, files_of_run, atlas_image, config, figures)),
        ("coverage", "Coverage", coverage_section(cov, regions, dropped, coverage, config, figures)),
        ("connectivity", "Connectivity", connectivity_section(
            data["fc"], data["diff"], data["diff_meta"], rec, regions, group_fc, group_diff, ground_truth_edges, figures)),
        ("pretraining", "Pretraining", pretraining_section(pretrain_metrics, dict(voxel_metrics or {}), config, figures,
                                                                  encoder_card)),
        ("finetuning", "Fine-tuning", finetune_section(finetune_table, predictions, atlas_labels, config, figures,
                                                      recipes)),
    ] + ([("text", "Text alignment", text_section(text))] if text else [])
    used = read.flatten(participants, manifest, validation, qc, coverage, run_qc, group_fc, group_diff,
                        read.existing_sidecar(group_diff), ground_truth_edges, pretrain_metrics,
                        list((voxel_metrics or {}).values()), finetune_table, predictions,
                        attribution_files(predictions) if finetune_table is not None else None,
                        bundle_files(encoder_card) if encoder_card is not None else None, list((text or {}).values()),
                        list((recipes or {}).values()),
                        *[item["sources"] for item in figures.items])
    sections.append(("provenance", "Provenance", provenance_section(config, files, manifest, used)))
    write_text(out_html, page(title, sections))
    return {
        "path": str(out_html), "sections": [sid for sid, _, _ in sections],
        "figures": figures.items,
        "inputs": used,
        "n_subjects": int(people["participant_id"].nunique()),
        "n_runs": len(runs_table),
        "dropped_regions": dropped["name"].tolist(),
        "ground_truth": None if rec is None else rec["summary"],
    }


def _without_failed(qc, coverage, run_files: Mapping) -> tuple[list, list, dict]:
    """The runs' files less failure records (qc.continue_on_failure): the run QC table lists those
    runs with their error; the per-run sections show the runs that have data."""
    from ..failure import read as record

    return ([p for p in qc if record(p) is None], [p for p in coverage if record(p) is None],
            {run: files for run, files in run_files.items() if all(record(f) is None for f in files.values())})


def _check_arguments(qc: list, coverage: list, group_diff, ground_truth_edges) -> None:
    if not qc:
        raise ValueError("'qc' must list at least one run QC table; an empty list was provided")
    if not coverage:
        raise ValueError("'coverage' must list at least one coverage table; an empty list was provided")
    if ground_truth_edges is not None and group_diff is None:
        raise ValueError("'ground_truth_edges' needs 'group_diff': planted edges are compared with the observed difference")


def _read_inputs(participants, manifest, validation, qc, coverage, run_qc, group_fc, group_diff, ground_truth_edges,
                 config) -> dict[str, Any]:
    """Every table the sections draw from, read and checked once (text columns stay text: "01" is not 1)."""
    data: dict[str, Any] = {
        "people": read.read_table(participants, ["participant_id"], dtype=str),
        "files": read.read_table(manifest, ["path", "sha256"], dtype=str),
        "checks": read.read_validation(validation),
    }
    runs = read.read_qc(qc)
    data["decisions"] = read.read_run_qc(run_qc) if run_qc is not None else None
    data["cov"] = read.read_coverage(coverage)
    data["regions"] = regions = read.regions_of(data["cov"])
    data["runs_table"] = run_table(runs, data["cov"], data["decisions"])
    data["fc"] = read.read_matrix(group_fc, regions)
    data["diff"] = read.read_matrix(group_diff, regions) if group_diff is not None else None
    data["diff_meta"] = read.read_diff_meta(group_diff) if group_diff is not None else {}
    data["edges"] = read.read_edges(ground_truth_edges, regions) if ground_truth_edges is not None else None
    data["config"] = read.read_config(config)
    return data


def _run_files(run_files: Mapping[str, Mapping[str, PathLike]]) -> dict[str, dict[str, str]]:
    """Keyed by run label (``sub-01_task-rest``); unknown kinds refused, naming them."""
    out = {}
    for key, files in run_files.items():
        unknown = set(files) - set(RUN_FILE_KINDS)
        if unknown:
            raise ValueError(f"run_files[{key!r}] has unknown kind(s) {sorted(unknown)}; allowed: {list(RUN_FILE_KINDS)}")
        out[Path(str(key)).name] = {k: str(v) for k, v in files.items() if v is not None}
    return out
