"""A project's config and file layout outside Snakemake: what the modelling commands of the CLI
(``fmriflow dataset | pretrain | finetune | finetune-summary``) share with the workflow.

``load_config`` reads the same YAML keys as the workflow, checks them against the same schema
(``workflow/schemas/config.schema.yaml``: an unknown or invalid key is an error naming it) and
fills in the same defaults; ``Paths`` places every artefact where the rules place it
(``workflow/rules/common.smk`` takes its folders from here).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import naming
from .errors import InputError

SCHEMA_ENV = "FMRIFLOW_SCHEMA"
# the schema of a source checkout (an editable install): the workflow's own file, not a copy
SOURCE_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def schema_path() -> Path:
    """The config schema: $FMRIFLOW_SCHEMA, else the checkout's ``workflow/schemas/config.schema.yaml``."""
    import os

    path = Path(os.environ.get(SCHEMA_ENV) or SOURCE_SCHEMA)
    if not path.is_file():
        raise InputError(path, f"config schema not found: run fmriflow from a checkout of the repository, or set "
                               f"${SCHEMA_ENV} to its workflow/schemas/config.schema.yaml")
    return path


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (dotted keys, YAML values: ``dataset.window=40``) as a nested mapping."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError("--set", f"{item!r} is not KEY=VALUE (a dotted config key, e.g. dataset.window=40)")
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(text)
    return nested


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section (as Snakemake merges config files); a copy."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if both else copy.deepcopy(value)
    return out


def load_config(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                *, timeseries: bool = True) -> dict[str, Any]:
    """The resolved config of ``config_file`` (YAML, the workflow's keys) with ``overrides`` on top.

    Checked as the workflow checks it (every rejected key named, then the relations between keys)
    and completed with the schema's defaults, in the schema's key order. ``timeseries``: the
    modelling commands read region time series, so ``input.mode`` is ``timeseries`` unless the
    file says otherwise, which is an error naming the key.
    """
    from .checks import check_config, in_schema_order, load_schema, with_defaults

    schema_file = schema_path()
    config: dict[str, Any] = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise InputError(config_file, "no such config file")
        config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise InputError(config_file, f"a config file holds a mapping of keys; found {type(config).__name__}")
    config = merged(config, overrides or {})
    if timeseries:
        mode = config.get("input", {}).get("mode", "timeseries")
        if mode != "timeseries":
            raise InputError(config_file or "config", f"input.mode is {mode!r}; the modelling commands read "
                             "region time series (input.mode: timeseries, input.timeseries: ...): run the workflow "
                             "(snakemake) for raw BIDS")
        config = merged(config, {"input": {"mode": "timeseries"}})
    sources = [str(config_file)] if config_file else []
    if overrides:
        sources.append("--set")
    check_config(config, schema_file, sources)
    schema = load_schema(schema_file)
    resolved = with_defaults(config, schema)
    resolved.setdefault("bids_dir", None)  # as the workflow: input.mode timeseries reads none
    in_schema_order(resolved, schema)
    return resolved


def model_atlas(config: Mapping[str, Any]) -> str:
    """The atlas of the foundation models: the region time series' (input.mode timeseries), else A424."""
    return config["input"]["timeseries"]["atlas"] if config["input"]["mode"] == "timeseries" else "A424"


@dataclass(frozen=True)
class Paths:
    """Where the workflow's rules write a project's modelling artefacts (``output_dir`` and the config)."""

    out: str
    atlas: str
    model: str
    target: str
    stat: str  # parcellate.strategy: the time series' stat- entity

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Paths":
        return cls(config["output_dir"], model_atlas(config), config["pretrain"]["model"],
                   config["finetune"]["target"], config["parcellate"]["strategy"])

    @property
    def deriv(self) -> str:
        return f"{self.out}/fmriflow"

    @property
    def dataset(self) -> str:
        return f"{self.out}/dataset/atlas-{self.atlas}"

    @property
    def pretrain(self) -> str:
        return f"{self.out}/pretrain/{self.model}"

    @property
    def bundle(self) -> str:
        return f"{self.deriv}/models/atlas-{self.atlas}_model-{self.model}"

    @property
    def finetune(self) -> str:
        return f"{self.out}/finetune/{self.target}"

    @property
    def atlas_labels(self) -> str:
        return f"{self.deriv}/{naming.atlas_table(self.atlas)}"

    @property
    def run_qc(self) -> str:
        return f"{self.deriv}/group/desc-runs_qc.tsv"

    def timeseries(self, run: str) -> str:
        return f"{self.deriv}/" + naming.template_derivative(run, atlas=self.atlas, stat=self.stat, suffix="timeseries",
                                                             extension=".tsv")

    def coverage(self, run: str) -> str:
        return f"{self.deriv}/" + naming.template_derivative(run, atlas=self.atlas, stat="coverage", suffix="bold",
                                                             extension=".tsv")

    def input_qc(self, run: str) -> str:
        return f"{self.deriv}/" + naming.derivative(run, desc="input", suffix="qc", extension=".tsv")

    def manifest(self, timeseries: bool = True) -> tuple[str, str]:
        """The raw inputs' manifest and checks (region time series', or the BIDS validator's)."""
        folder = f"{self.out}/{'timeseries' if timeseries else 'bids'}"
        return f"{folder}/manifest.tsv", f"{folder}/validation.json"
