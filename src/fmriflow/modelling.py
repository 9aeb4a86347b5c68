"""The modelling half without Snakemake: region time series -> dataset -> pretraining -> fine-tuning.

Each function is one CLI command (``fmriflow dataset | pretrain | finetune``) and runs the same
steps as the workflow's rules, in their order, with the same config (``fmriflow.project``), into
the same files (``project.Paths``), each with its provenance sidecar:

- ``dataset_steps``: the ``timeseries_atlas``, ``timeseries_run`` (per run), ``timeseries_manifest``,
  ``run_qc`` and ``dataset`` rules (the dataset prepared by a bundle's card with
  ``finetune.encoder`` or ``pretrain.init``);
- ``pretrain_steps``: the ``pretrain`` and ``bundle`` rules (one process; several GPUs or nodes:
  the workflow, or ``torchrun -m fmriflow.train``);
- ``finetune_steps``: ``finetune_features``, ``finetune`` per set-up and ``finetune_table``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from .naming import subject_of
from .project import Paths

log = logging.getLogger("fmriflow")

Config = Mapping[str, Any]

# the pretrain section's keys that the pretrain rule gives fmriflow.train (workflow/rules/pretrain.smk)
PRETRAIN_OPTIONS = ("model", "batch_size", "max_steps", "lr", "warmup_steps", "checkpoint_every", "precision", "seed",
                    "num_workers", "compile")
# finetune keys that say which set-ups exist, size the job or bring the encoder: not the set-up's
# settings (the finetune rule drops the same: workflow/rules/finetune.smk)
FINETUNE_NOT_SETTINGS = ("enabled", "setups", "gpus", "workers", "mem_mb", "runtime", "encoder", "scaling")
# what shapes the bundle's card as the data's preparation (the bundle rule's params)
PREPARATION = ("preproc.mode", "denoise", "parcellate")


def _inputs(config: Config):
    from .timeseries import find_inputs

    return find_inputs(config["input"]["timeseries"], config["subjects"], config["tasks"])


def card_bundle(config: Config) -> str | None:
    """The bundle whose card prepares the dataset: ``finetune.encoder``, else ``pretrain.init``, else none."""
    bundle = config["finetune"]["encoder"] or config["pretrain"]["init"]
    return str(Path(bundle)) if bundle else None


def dataset_steps(config: Config) -> str:
    """Ingest the region time series, QC the runs, build the dataset; the dataset card's path."""
    from .steps import dataset_step, run_qc_step
    from .timeseries.steps import atlas_step, ingest_step, manifest_step

    paths, ts = Paths.of(config), config["input"]["timeseries"]
    inputs = _inputs(config)
    runs = {run: str(path) for run, path in inputs.runs.items()}
    atlas_step(paths.atlas_labels, **{k: ts[k] for k in ("atlas", "coordinates", "labels_image", "labels_table")})
    for run, source in runs.items():
        ingest_step(run, source, ts["format"], paths.atlas_labels, paths.timeseries(run), paths.coverage(run),
                    paths.input_qc(run), atlas=ts["atlas"], repetition_time=ts["repetition_time"],
                    fd_threshold=config["qc"]["fd_threshold"])
    manifest_step(runs, ts["format"], ts["atlas"], *paths.manifest(), repetition_time=ts["repetition_time"])
    run_qc_step(list(runs), [paths.input_qc(r) for r in runs], [paths.coverage(r) for r in runs], paths.run_qc,
                **config["qc"])
    included = included_runs(paths.run_qc, runs)
    out_card = f"{paths.dataset}/dataset_card.json"
    series = [paths.timeseries(r) for r in included]
    bundle = card_bundle(config)
    if bundle:
        from .bundle import CARD
        from .bundle.prepare import prepare_step

        prepare_step(f"{bundle}/{CARD}", paths.atlas, None, paths.atlas_labels, included, series,
                     str(inputs.participants), out_card, config=config)
    else:
        dataset_step(included, series, str(inputs.participants), out_card, **config["dataset"])
    return out_card


def included_runs(run_qc_table: str, runs: Mapping[str, str]) -> list[str]:
    """The runs that pass QC, in run order (the workflow's group steps: ``fmriflow.runfiles.included``)."""
    from .errors import InputError
    from .io import read_tsv

    table = read_tsv(run_qc_table, dtype={"run": str})
    keep = set(table.loc[table["included"].astype(str) == "True", "run"])
    included = [r for r in runs if r in keep]
    if not included:
        raise InputError(run_qc_table, "QC excluded every run: see the reasons in this table")
    return included


def train_config(config: Config):
    """The pretrain rule's ``fmriflow.train`` settings, as a ``TrainConfig``."""
    from .training.config import TrainConfig

    paths, section = Paths.of(config), config["pretrain"]
    init = {"init_from": str(Path(section["init"])), "atlas": paths.atlas} if section["init"] else {}
    return TrainConfig(dataset=paths.dataset, coords=paths.atlas_labels, out=paths.pretrain,
                       **{k: section[k] for k in PRETRAIN_OPTIONS}, **init)


def pretrain_steps(config: Config) -> dict[str, Any]:
    """Pretrain (or resume) on the dataset; once complete, package the model as a bundle."""
    from .bundle.write import bundle_step
    from .training.loop import train

    paths = Paths.of(config)
    cfg = train_config(config)
    result = train(cfg)
    if result["interrupted"]:
        return result
    bundle_step(f"{paths.pretrain}/model.pt", f"{paths.pretrain}/metrics.csv", f"{paths.dataset}/dataset_card.json",
                paths.atlas, None, paths.atlas_labels, paths.manifest()[0], paths.bundle,
                preprocessing=picked(config, PREPARATION))
    return {**result, "bundle": paths.bundle}


def picked(config: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries ``keys`` (sections or dotted keys) of ``config``, sorted, as the rules' ``shaping`` picks them."""
    out: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        source, target = config, out
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = source[last]
    return _sorted(out)


def _sorted(value: Any) -> Any:
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, Mapping) else value


def finetune_settings(config: Config):
    """The finetune rule's settings: the section less the keys that are not a set-up's settings."""
    from .finetune.settings import FinetuneSettings

    section = {k: v for k, v in config["finetune"].items() if k not in FINETUNE_NOT_SETTINGS}
    return FinetuneSettings.from_config(_sorted(section))


def setups(config: Config, participants: str, runs: list[str]) -> list[str]:
    """The set-ups the participants table supports, among ``finetune.setups`` (the workflow's ``finetune_setups``)."""
    from .finetune.cohort import load_cohort, setup_names

    section = config["finetune"]
    cohort = load_cohort(participants, section["target"], section["task"], section["missing_labels"],
                         subjects=sorted({subject_of(r) for r in runs}))
    names = setup_names(cohort, section["drug_column"], section["site_column"])
    return [n for n in names if n.split("-")[0] in section["setups"]]


def finetune_steps(config: Config, workers: int | None = None) -> str:
    """Embed the windows, cross-validate every variant and baseline per set-up, gather the table.

    ``workers``: processes fitting units side by side; None takes ``finetune.workers``.
    """
    from .finetune.run import features_step, setup_step, table_step

    paths, settings = Paths.of(config), finetune_settings(config)
    encoder = config["finetune"]["encoder"]
    model = f"{Path(encoder)}/model.safetensors" if encoder else f"{paths.pretrain}/model.pt"
    if not Path(model).is_file():
        from .errors import InputError

        raise InputError(model, "no such file: run `fmriflow pretrain` first, or set finetune.encoder to a bundle")
    participants = str(_inputs(config).participants)
    features = f"{paths.finetune}/features"
    features_step(paths.dataset, model, paths.atlas_labels, features, seed=settings.seed, device=settings.train.device)
    metrics = []
    for setup in setups(config, participants, list(_inputs(config).runs)):
        out = f"{paths.finetune}/setup-{setup}"
        setup_step(setup, paths.dataset, features, participants, model, paths.atlas_labels, out, settings,
                   workers=workers or config["finetune"]["workers"])
        metrics.append(f"{out}/metrics.tsv")
    table_step(metrics, f"{paths.finetune}/variants.tsv")
    return f"{paths.finetune}/variants.tsv"
