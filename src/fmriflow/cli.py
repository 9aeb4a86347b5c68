"""The ``fmriflow`` command line: the library's steps outside Snakemake."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError, SettingError

# the schema's defaults of atlas.cache_dir and atlas.pinned_cache_dir (a test keeps them equal): the CLI shares
# the workflow's caches without needing the schema file
DEFAULT_CACHE = "resources/atlases/A424"
DEFAULT_PINNED_CACHE = "resources/atlases"


def _demo_data(args: argparse.Namespace) -> None:
    from .atlas import fetch_a424
    from .demo import generate_demo

    files = fetch_a424(args.atlas_cache, args.atlas_dir)
    summary = generate_demo(
        args.out, files["labels_img"], files["coordinates"], n_subjects=args.subjects, n_trs=args.trs,
        tr=args.tr, bold_res=args.bold_res, seed=args.seed, jobs=args.jobs, overwrite=args.overwrite,
        head_motion=args.head_motion, dummy_volumes=args.dummy_volumes,
        pretraining_subjects=args.pretraining_subjects, pretraining_trs=args.pretraining_trs,
        responder_loading=args.responder_loading, sc_effect=args.sc_effect, sc_block_sd=args.sc_block_sd,
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


# the modelling commands' flags that set a config key (the rest come from --config and --set)
CONFIG_FLAGS = {"output_dir": "output_dir", "timeseries": "input.timeseries.dir", "format": "input.timeseries.format",
                "atlas": "input.timeseries.atlas", "coordinates": "input.timeseries.coordinates",
                "participants": "input.timeseries.participants"}


def _config(args: argparse.Namespace, **implied: Any) -> dict:
    """The resolved config of a modelling command: --config, then its flags and --set, then what the
    command implies (``implied``: dotted key -> value, e.g. pretrain.enabled for ``pretrain``)."""
    from .project import load_config, merged, parse_settings

    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in CONFIG_FLAGS.items()
             if getattr(args, flag, None) is not None]
    overrides = merged(parse_settings(flags + (args.set or [])),
                       parse_settings(f"{key}={json.dumps(value)}" for key, value in implied.items()))
    return load_config(args.config, overrides)


def _dataset(args: argparse.Namespace) -> None:
    from .modelling import dataset_steps

    with _logged():
        print(f"dataset written: {dataset_steps(_config(args))}")


def _pretrain(args: argparse.Namespace) -> None:
    from .modelling import pretrain_steps

    with _logged():
        result = pretrain_steps(_config(args, **{"pretrain.enabled": True}))
    if result["interrupted"]:
        raise RuntimeError(f"interrupted at step {result['step']}; checkpoint written, rerun to continue")
    print(f"pretrained to step {result['step']}; bundle written: {result['bundle']}")


def _finetune(args: argparse.Namespace) -> None:
    from .modelling import finetune_steps

    with _logged():
        table = finetune_steps(_config(args, **{"finetune.enabled": True}), workers=args.workers)
    print(f"variants table written: {table}")


def _logged():
    """The steps' messages and warnings on stderr, as the workflow's jobs write them to their logs."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def scope():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(level)

    return scope()


def _finetune_summary(args: argparse.Namespace) -> None:
    from .finetune.summary import format_summary

    folder = args.folder
    if folder is None:
        from .project import Paths

        folder = Path(Paths.of(_config(args)).finetune)
    print(format_summary(folder, args.top, args.truth))


def _model_card(args: argparse.Namespace) -> None:
    import json

    from .bundle import read_card
    from .bundle.show import format_card

    card = read_card(args.bundle)
    print(json.dumps(card, indent=2) if args.json else format_card(card, args.regions))


def _import_checkpoint(args: argparse.Namespace) -> None:
    from .bundle.imports import import_checkpoint

    paths = import_checkpoint(args.kind, args.path, args.out, atlas_cache=args.atlas_cache,
                              pinned_cache=args.pinned_cache, atlas_dir=args.atlas_dir, gradient=args.gradient)
    print(f"bundle written to {args.out} ({', '.join(p.name for p in paths.values())}); "
          f"fmriflow model-card {args.out} prints its recipe")


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


def _config_options(p: argparse.ArgumentParser, inputs: bool = True) -> None:
    """--config, --output-dir and --set; with ``inputs`` the region time series' flags."""
    p.add_argument("--config", type=Path, help="YAML file with the workflow's keys (config/config.yaml's); "
                   "defaults: workflow/schemas/config.schema.yaml, as for the workflow")
    p.add_argument("--output-dir", help="output_dir: where the artefacts go (the workflow's layout)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a config key (dotted, e.g. dataset.window=40 or pretrain.max_steps=500); repeatable")
    if not inputs:
        return
    p.add_argument("--timeseries", help="input.timeseries.dir: the folder of region time series")
    p.add_argument("--format", help="input.timeseries.format: xcpd | cpac | table")
    p.add_argument("--atlas", help="input.timeseries.atlas: the atlas's name as the files name it")
    p.add_argument("--coordinates", help="input.timeseries.coordinates: TSV of region names and MNI x, y, z")
    p.add_argument("--participants", help="input.timeseries.participants (default: participants.tsv in the folder)")


def _modelling_parsers(sub) -> None:
    """The modelling half, step by step, on region time series: the workflow's rules without Snakemake."""
    p = sub.add_parser("dataset", help="region time series + participants table -> QC'd runs -> model-ready dataset",
                       description="Ingests region time series (input.timeseries: XCP-D, C-PAC/ABIDE .1D, or "
                       "TSV/CSV/NPY with a sidecar), checks and QCs each run and builds the windows, scaling and "
                       "subject splits, as the workflow's rules do, into <output_dir>/dataset/atlas-<atlas>.")
    _config_options(p)
    p.set_defaults(func=_dataset)

    p = sub.add_parser("pretrain", help="pretrain the encoder on the dataset (resumes from its checkpoint); "
                       "package it as a bundle", description="Trains pretrain.model on `fmriflow dataset`'s windows "
                       "(pretrain.init: continued from a bundle) into <output_dir>/pretrain/<model>, then writes its "
                       "bundle (weights, config.json, model card) under <output_dir>/fmriflow/models/.")
    _config_options(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("finetune", help="fine-tune and evaluate every variant and baseline, cross-validated by subject",
                       description="Embeds the windows with the pretrained encoder (or finetune.encoder's bundle), "
                       "cross-validates every finetune.variants and baseline on each set-up the participants table "
                       "supports, and writes <output_dir>/finetune/<target>/variants.tsv.")
    _config_options(p)
    p.add_argument("--workers", type=int, default=None,
                   help="processes training folds side by side (same results); default: finetune.workers")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("finetune-summary", help="print the fine-tuning variant table and attributions")
    p.add_argument("folder", type=Path, nargs="?", help="e.g. results/finetune/response (default: the folder "
                   "that --config's output_dir and finetune.target name)")
    _config_options(p, inputs=False)
    p.add_argument("--top", type=int, default=10, help="top regions by attribution to list")
    p.add_argument("--truth", type=Path, help="table of region 'index' and boolean 'planted' (a simulation's "
                   "ground truth, e.g. data/demo/ground_truth/regions.tsv): compare the attributions with it")
    p.set_defaults(func=_finetune_summary)


def _bundle_parsers(sub, atlas_options) -> None:
    """The encoder-bundle commands: ``model-card`` and ``import-checkpoint``."""
    p = sub.add_parser("model-card", help="print an encoder bundle's model card (how to prepare data for it, "
                                          "where it came from)")
    p.add_argument("bundle", type=Path, help="the bundle folder (e.g. results/fmriflow/models/atlas-A424_model-tiny) "
                   "or its model_card.json")
    p.add_argument("--regions", type=int, default=5, help="regions whose statistics are listed (all are in the card)")
    p.add_argument("--json", action="store_true", help="the whole card as JSON")
    p.set_defaults(func=_model_card)

    p = sub.add_parser("import-checkpoint", help="turn a local copy of released weights into an encoder bundle "
                       "(every tensor mapped; the card records the authors' input recipe)")
    p.add_argument("kind", choices=("brainlm-v1", "brainlm-vitmae", "brain-jepa", "neurostorm"),
                   help="brainlm-v1: BrainLM's BrainLMForPretraining release; brainlm-vitmae: its ViT-MAE 111M/650M "
                        "releases (needs the extra fmriflow[transformers]); brain-jepa: jepa-ep300.pth.tar; "
                        "neurostorm: a NeuroSTORM Lightning checkpoint (MAE-pretrained or fine-tuned)")
    p.add_argument("path", type=Path, help="the release folder (config.json beside pytorch_model.bin or "
                   "model.safetensors), its weights file, or the checkpoint file (brain-jepa, neurostorm)")
    p.add_argument("out", type=Path, help="the bundle folder to write")
    p.add_argument("--gradient", type=Path, help="brain-jepa: the region gradient table (default: "
                   "gradient_mapping_450.csv beside the checkpoint)")
    atlas_options(p)  # the card records A424's region order and coordinates
    p.add_argument("--pinned-cache", default=DEFAULT_PINNED_CACHE,
                   help="brain-jepa: the pinned atlases' cache folder, the workflow's atlas.pinned_cache_dir "
                        f"(default {DEFAULT_PINNED_CACHE}); its atlas is fetched there or taken from --atlas-dir")
    p.set_defaults(func=_import_checkpoint)


def _add_demo_data(sub, atlas_options) -> None:
    p = sub.add_parser("demo-data", help="write the synthetic demo dataset (raw BIDS, fMRIPrep-shaped derivatives, "
                                         "ground truth)")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--trs", type=int, default=200, help="volumes per run")
    p.add_argument("--tr", type=float, default=2.0, help="repetition time in seconds")
    p.add_argument("--bold-res", type=int, default=2, choices=(2, 3, 4),
                   help="voxel size (mm) of the preprocessed BOLD")
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
    p.add_argument("--responder-loading", type=float, default=None,
                   help="responders' extra factor loading on the responder networks, the FC effect (default 0.5); "
                        "0.2 splits the group difference between FC and the connectomes (BrainSymphony fusion demo)")
    p.add_argument("--sc-effect", type=float, default=None,
                   help="responders' extra fraction of streamlines in the connectomes' effect networks (default 0.25)")
    p.add_argument("--sc-block-sd", type=float, default=None,
                   help="SD of a subject's log tract density per pair of networks (default 0; the fusion demo: 0.15)")
    atlas_options(p)
    p.set_defaults(func=_demo_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmriflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fmriflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def atlas_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--atlas-dir",
                       help="folder holding the A424 files (else $FMRIFLOW_ATLAS_DIR, the cache, or a download)")
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

    _modelling_parsers(sub)

    _bundle_parsers(sub, atlas_options)

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
    except (InputError, SettingError, RuntimeError, FileNotFoundError, ImportError) as exc:
        print(f"fmriflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
