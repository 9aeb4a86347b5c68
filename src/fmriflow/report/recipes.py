"""The report's table of released models' recipes (``recipes`` in the config): how each imported
model's input was prepared, as its card says, and what the recipe step did (``recipe.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io import read_json
from .html import sources_html, table

PathLike = str | Path


def _atlas(recipe: Mapping[str, Any]) -> str:
    card, applied = recipe["card_atlas"], recipe["applied"]
    if applied["kind"] == "voxels":
        return f"voxels: MNI152 2 mm cropped / padded to {'x'.join(map(str, applied['grid']))}"
    order = ", ".join(recipe["card_region_order"])
    return (f"{card['name']} ({card['n_regions']} regions) as this project's {applied['project_atlas']}; "
            f"in the card's order ({order}, ...)")


def _tr(recipe: Mapping[str, Any]) -> str:
    applied = recipe["applied"]
    ours = ", ".join(f"{t:g}" for t in applied.get("tr_of_runs", [])) or "each run's"
    target = applied["target_tr"]
    return f"{ours} s -> {target:g} s ({applied['resampling']})" if target else "each run's own (none in the card)"


def _window(recipe: Mapping[str, Any]) -> str:
    applied = recipe["applied"]
    step = applied.get("frame_step", 1)
    return f"{applied['window']} frames{f' every {step}' if step > 1 else ''}, a window every {applied['stride']}"


def recipe_row(name: str, recipe: Mapping[str, Any], variants: Sequence[str] = ()) -> list[str]:
    """``variants``: finetune.recipe_variants, the recipe's FMMTC rows ``<variant>_<name>``."""
    scaling = recipe["applied"]["scaling"]
    return [f"probe_{name}", f"probe_random_{name}", ", ".join(f"{v}_{name}" for v in variants) or "none",
            f"{recipe['model']} ({recipe['architecture']})", _atlas(recipe), _tr(recipe),
            _window(recipe), f"{recipe['card_recipe']['scaling']['method']}; statistics: {scaling['statistics_from']}",
            f"{recipe['windows']} windows of {recipe['subjects']} subjects", recipe["card"]["sha256"][:12]]


def recipes_html(recipes: Mapping[str, PathLike], variants: Sequence[str] = ()) -> str:
    """One row per recipe (name -> its ``recipe.json``); empty when none ran. ``variants``: finetune.recipe_variants."""
    if not recipes:
        return ""
    rows = [recipe_row(name, read_json(path), variants) for name, path in sorted(recipes.items())]
    headers = ["Probe row", "Random-encoder control", "FMMTC variants", "Model", "Atlas and region order", "TR",
               "Window", "Normalisation", "Input", "Card sha256"]
    return ("<h3>Released models, each on its authors' recipe</h3><p>Each imported model's input prepared from this "
            "project's data as its model card records its authors' preparation; its frozen embeddings, averaged per "
            "subject, are probed on the baselines' folds beside a label-permuted control and beside the same probe on "
            "the same architecture randomly initialised (what the released weights add); its window embeddings, "
            "paired in time with the dataset's windows, are the time-series branch of FMMTC variants on the same "
            "folds.</p>"
            f"{table(headers, rows, table_id='recipes', scroll=True)}"
            f'<div class="source">Recipes: {sources_html(list(recipes.values()))}</div>')
