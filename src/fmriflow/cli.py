"""The ``fmriflow`` command line: the library's steps outside Snakemake."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import InputError

DEFAULT_CACHE = "resources/atlases/A424"


def _demo_data(args: argparse.Namespace) -> None:
    from .atlas import fetch_a424
    from .demo import generate_demo

    files = fetch_a424(args.atlas_cache, args.atlas_dir)
    summary = generate_demo(
        args.out, files["labels_img"], files["coordinates"], n_subjects=args.subjects, n_trs=args.trs,
        tr=args.tr, bold_res=args.bold_res, seed=args.seed, jobs=args.jobs, overwrite=args.overwrite,
        head_motion=args.head_motion, dummy_volumes=args.dummy_volumes,
        pretraining_subjects=args.pretraining_subjects, pretraining_trs=args.pretraining_trs,
    )
    print(f"demo dataset written to {args.out} ({summary.get('n_subjects', args.subjects)} subjects)")


def _fetch_atlas(args: argparse.Namespace) -> None:
    from .atlas import fetch_a424

    for key, path in fetch_a424(args.atlas_cache, args.atlas_dir).items():
        print(f"{key}: {path}")


def _parcellate(args: argparse.Namespace) -> None:
    from .parcellate_step import parcellate_step  # not through .steps: its imports would double the start-up

    parcellate_step(args.bold, args.mask, [(args.atlas, args.labels)], [args.out], [args.coverage],
                    strategy=args.strategy, min_coverage=args.min_coverage)


def _connectivity(args: argparse.Namespace) -> None:
    from .steps import connectivity_step, tangent_step

    if args.kind == "tangent":
        if len(args.reference or []) < 2:
            raise InputError("--reference", f"--kind tangent needs at least 2 time-series files (the group it is "
                                            f"relative to); {len(args.reference or [])} given")
        tangent_step(args.timeseries, args.reference, args.out)
    else:
        connectivity_step(args.timeseries, [args.out], [None], kinds=[args.kind])


def _finetune_summary(args: argparse.Namespace) -> None:
    from .finetune.summary import format_summary

    print(format_summary(args.folder, args.top, args.truth))


def _model_card(args: argparse.Namespace) -> None:
    import json

    from .bundle import read_card
    from .bundle.show import format_card

    card = read_card(args.bundle)
    print(json.dumps(card, indent=2) if args.json else format_card(card, args.regions))


def _timings(args: argparse.Namespace) -> None:
    from .timings import format_timings, jobs, read_benchmarks, read_metadata, rule_table

    job_table = jobs(read_metadata(args.metadata, since=args.since))
    peaks = read_benchmarks(args.benchmarks) if args.benchmarks else None
    print(format_timings(rule_table(job_table, peaks), job_table))


def _audit(args: argparse.Namespace) -> None:
    from .audit import AuditFailed, audit, format_tree, parse_maps

    try:
        maps = parse_maps(args.map or [])
    except ValueError as exc:
        raise InputError("--map", str(exc)) from exc
    if not Path(args.file).exists():
        raise InputError(args.file, "no such file")
    result = audit(args.file, maps=maps, workdir=args.workdir, results=args.results)
    if not args.quiet:
        print(format_tree(result))
    if not result.ok:
        raise AuditFailed(f"{len(result.problems)} problem(s) under {args.file}:\n  " + "\n  ".join(result.problems))


def _add_demo_data(sub, atlas_options) -> None:
    p = sub.add_parser("demo-data", help="write the synthetic demo dataset (raw BIDS, fMRIPrep-shaped derivatives, ground truth)")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--trs", type=int, default=200, help="volumes per run")
    p.add_argument("--tr", type=float, default=2.0, help="repetition time in seconds")
    p.add_argument("--bold-res", type=int, default=2, choices=(2, 3, 4), help="voxel size (mm) of the preprocessed BOLD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="subjects generated in parallel")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--head-motion", type=float, default=None,
                   help="raw BOLD shows the head in a random pose moving by this multiple of the motion parameters")
    p.add_argument("--dummy-volumes", type=int, default=0, help="non-steady-state volumes before each raw run")
    p.add_argument("--pretraining-subjects", type=int, default=0,
                   help="also write an unlabelled pretraining cohort of this many subjects (A424 region time series, "
                        "XCP-D layout) under OUT/pretraining")
    p.add_argument("--pretraining-trs", type=int, default=None, help="volumes per pretraining run (default: --trs)")
    atlas_options(p)
    p.set_defaults(func=_demo_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmriflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fmriflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def atlas_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--atlas-dir", help="folder holding the A424 files (else $FMRIFLOW_ATLAS_DIR, the cache, or a download)")
        p.add_argument("--atlas-cache", default=DEFAULT_CACHE, help=f"atlas cache folder (default {DEFAULT_CACHE})")

    _add_demo_data(sub, atlas_options)

    p = sub.add_parser("fetch-atlas", help="download (or copy) and verify the A424 atlas into the cache")
    atlas_options(p)
    p.set_defaults(func=_fetch_atlas)

    p = sub.add_parser("parcellate", help="region time series of a 4D BOLD image")
    p.add_argument("--bold", required=True)
    p.add_argument("--atlas", required=True, help="label image on the BOLD grid")
    p.add_argument("--labels", help="look-up TSV with index and name columns (default: the image's labels)")
    p.add_argument("--mask", help="brain mask; voxels outside it are ignored")
    p.add_argument("--strategy", choices=("mean", "median"), default="mean")
    p.add_argument("--min-coverage", type=float, default=0.0)
    p.add_argument("--coverage", help="also write per-region coverage to this TSV")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_parcellate)

    p = sub.add_parser("connectivity", help="connectivity matrix of region time series")
    p.add_argument("--timeseries", required=True)
    p.add_argument("--kind", choices=("pearson", "partial", "tangent"), default="pearson")
    p.add_argument("--reference", nargs="+", help="tangent only: time-series files of the reference group")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_connectivity)

    p = sub.add_parser("finetune-summary", help="print the fine-tuning variant table and attributions")
    p.add_argument("folder", type=Path, help="e.g. results/finetune/response")
    p.add_argument("--top", type=int, default=10, help="top regions by attribution to list")
    p.add_argument("--truth", type=Path, help="table of region 'index' and boolean 'planted' (a simulation's "
                   "ground truth, e.g. data/demo/ground_truth/regions.tsv): compare the attributions with it")
    p.set_defaults(func=_finetune_summary)

    p = sub.add_parser("model-card", help="print an encoder bundle's model card (how to prepare data for it, where it came from)")
    p.add_argument("bundle", type=Path, help="the bundle folder (e.g. results/fmriflow/models/atlas-A424_model-tiny) "
                   "or its model_card.json")
    p.add_argument("--regions", type=int, default=5, help="regions whose statistics are listed (all are in the card)")
    p.add_argument("--json", action="store_true", help="the whole card as JSON")
    p.set_defaults(func=_model_card)

    p = sub.add_parser("timings", help="wall seconds per rule of a Snakemake run (from .snakemake/metadata)")
    p.add_argument("--metadata", type=Path, default=Path(".snakemake/metadata"), help="Snakemake's metadata folder")
    p.add_argument("--since", type=float, help="only jobs that started at or after this time (seconds since the epoch)")
    p.add_argument("--benchmarks", type=Path, help="folder of Snakemake benchmark tables, one subfolder per rule "
                   "(their max_rss gives the peak memory column)")
    p.set_defaults(func=_timings)

    p = sub.add_parser("audit", help="verify an artefact's provenance back to the raw inputs (every sha256)",
                       description="Walks FILE's provenance sidecar and its inputs' sidecars down to the raw inputs, "
                       "verifying every recorded sha256; prints the chain as a tree; exits 1 on any mismatch, "
                       "missing file or missing sidecar.")
    p.add_argument("file", help="an artefact under a results folder")
    p.add_argument("--map", action="append", metavar="OLD=NEW",
                   help="read recorded paths starting with OLD under NEW (raw inputs that moved); repeatable")
    p.add_argument("--workdir", help="folder that relative recorded paths start from (where Snakemake ran); "
                   "default: inferred from the artefacts' recorded locations, else the current folder")
    p.add_argument("--results", help="the results folder (default: found upwards from FILE)")
    p.add_argument("--quiet", action="store_true", help="print only the problems")
    p.set_defaults(func=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, RuntimeError, FileNotFoundError) as exc:
        print(f"fmriflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
