"""Fine-tuning steps: cached features, one set-up's cross-validation, the variant table.

``features_step`` writes, for every dataset window, its FC and the embeddings of the frozen
pretrained encoder and of a random encoder of the same shape. ``setup_step`` runs one
set-up (``cohort.setup_names``): for each repeat and outer fold it splits the training
subjects into fit and validation subjects, trains every variant with early stopping,
fits the baselines and the frozen probes (``probe``) by nested CV, scores the test subjects (window scores averaged per
subject), and computes integrated gradients of the main model (concat fusion) on the
test windows (folds: ``crossval``; worker processes: ``pool``; attribution tables:
``ig_tables``). ``table_step``
gathers every set-up's metrics into one table. The steps take the config section as
``FinetuneSettings`` (``settings``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..datasets.regions import SAMPLES, read_index
from ..io import atomic_path, read_tsv, write_tsv
from ..naming import FINETUNE_FEATURES, FINETUNE_SYMPHONY_SUBJECTS
from ..provenance import write_sidecar
from . import cohort as cohorts
from . import features as feats
from . import symphony
from .crossval import Results, fold_units, load_inputs, make_fold
from .pool import run_units
from .ig_tables import IGTables
from .settings import FinetuneSettings

log = logging.getLogger(__name__)


def features_step(dataset: str, model: str, coords: str, out_dir: str, seed: int = 0, device: str = "cpu") -> None:
    from ..atlas import load_labels_table

    index = read_index(dataset)
    samples = index["sample"].to_numpy(dtype=np.int64)
    xyz = load_labels_table(coords)[["x", "y", "z"]].to_numpy(dtype=np.float32)
    arrays = {
        FINETUNE_FEATURES["samples"]: samples,
        FINETUNE_FEATURES["fc"]: feats.dataset_fc(dataset, samples),
        FINETUNE_FEATURES["ts_pretrained"]: feats.embed(feats.load_encoder(model, xyz, True, seed), dataset, samples,
                                                        device=device),
        FINETUNE_FEATURES["ts_random"]: feats.embed(feats.load_encoder(model, xyz, False, seed), dataset, samples,
                                                    device=device),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with atomic_path(out / name) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a path would append '.npy' to the temp name
                np.save(fh, array)
        write_sidecar(out / name, "finetune_features", [f"{dataset}/index.tsv", f"{dataset}/{SAMPLES}", model, coords],
                      parameters={"seed": seed, "fc": "Fisher z of Pearson r per window (|r| clipped at 0.999)",
                                  "embedding": "frozen encoder, pooled (BrainLM forward_head)"})


def setup_step(setup: str, dataset: str, features_dir: str, participants: str, model: str, coords: str,
               out_dir: str, settings: FinetuneSettings, workers: int = 1, symphony_dir: str | None = None,
               recipe_dirs: dict[str, dict[str, str]] | None = None, symphony_fusion: str = "mean") -> None:
    """Cross-validate every variant and baseline of ``settings`` on one set-up; write its tables.

    ``workers``: processes that train the folds' units side by side (``fmriflow.finetune.pool``);
    the tables are the same for any number. ``symphony_dir``: BrainSymphony's features
    (``fmriflow.finetune.symphony``), whose probe rows then join the table; None: none. ``recipe_dirs``:
    each released model's recipe embeddings (name -> encoder ('pretrained', 'random') -> folder,
    ``fmriflow.finetune.recipe_probe``): rows ``probe_<name>``, ``probe_random_<name>`` and the recipe's
    FMMTC variants ``<variant>_<name>`` (``finetune.recipe_variants``, ``fmriflow.finetune.recipe_fusion``).
    ``symphony_fusion``: brainsymphony.fusion, how BrainSymphony's fused row is made
    (``fmriflow.finetune.crossval.Inputs``).
    """
    inputs = load_inputs(dataset, features_dir, participants, settings, symphony_dir, recipe_dirs, symphony_fusion)
    attribution = IGTables(setup, model, coords, dataset, inputs, settings)
    results = Results(inputs.cohort)
    tasks = []
    for repeat in range(settings.repeats):
        seed = settings.seed + repeat
        plan = cohorts.folds(inputs.cohort, setup, settings.folds, seed, settings.drug_column, settings.site_column)
        for index, (train, test) in enumerate(plan):
            fold = make_fold(inputs, setup, repeat, index, seed, train, test, settings.val_fraction)
            log.info("set-up %s, repeat %d, fold %d/%d: %d fit, %d validation, %d test subjects", setup, repeat,
                     index + 1, len(plan), len(fold.fit), len(fold.val), len(test))
            results.fold_rows += fold.roles()
            tasks += [(fold, unit) for unit in fold_units(settings, bool(inputs.subject_extra), tuple(inputs.recipes))]
    log.info("set-up %s: %d units (variants, permuted controls, baselines) of %d folds on %d worker(s)", setup,
             len(tasks), len({(f.repeat, f.index) for f, _ in tasks}), workers)
    run_units(tasks, inputs, settings, results, attribution, workers, desc=f"fine-tuning {setup}")
    tables = {**results.tables(settings), **attribution.tables()}
    if symphony_dir:  # who had a connectome (the fused row) and who took the fMRI-only path, for the report
        subjects = read_tsv(Path(symphony_dir) / symphony.SUBJECTS, dtype={"subject": str})
        tables[FINETUNE_SYMPHONY_SUBJECTS] = subjects[subjects["subject"].isin(inputs.cohort.labels.index)]
    sources = [f"{dataset}/index.tsv", *(str(Path(features_dir) / f) for f in FINETUNE_FEATURES.values()), participants, model,
               *(sorted(str(p) for p in Path(symphony_dir).glob("*.npy")) if symphony_dir else []),
               *(str(Path(d) / f) for dirs in (recipe_dirs or {}).values() for d in dirs.values()
                 for f in ("embeddings.npy", "windows.tsv"))]
    parameters = {"setup": setup, "task": inputs.cohort.task, "dropped_unlabelled": list(inputs.cohort.dropped),
                  **({"brainsymphony_fusion": symphony_fusion} if symphony_dir else {})}
    for name, frame in tables.items():
        write_tsv(Path(out_dir) / name, frame)
        write_sidecar(Path(out_dir) / name, "finetune", sources, parameters=parameters, config=settings.provenance())


def table_step(metrics: list[str], out_tsv: str) -> None:
    """Every set-up's metrics in one table (the report's fine-tuning table)."""
    frame = pd.concat([read_tsv(m) for m in metrics], ignore_index=True)
    write_tsv(out_tsv, frame)
    write_sidecar(out_tsv, "finetune_table", metrics)
