"""The shape of the library, checked: no import loop, short functions, one set of defaults.

The import graph and function lengths are read with ``ast`` (nothing is imported); the
defaults of the library's settings are compared with the config schema's, which is where
defaults live (workflow/schemas/config.schema.yaml).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "fmriflow").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fmriflow modules ``name`` imports, at module level or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_planted_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_loop():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and graph["fmriflow.steps"]  # the walk saw the package and its imports
    assert _cycles(graph) == []


def test_no_function_is_over_80_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def _schema_defaults(section: str) -> dict:
    node = yaml.safe_load(SCHEMA.read_text())
    for part in section.split("."):
        node = node["properties"][part]
    return {key: spec["default"] for key, spec in node["properties"].items() if "default" in spec}


def _library_defaults(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING}
    return {name: p.default for name, p in inspect.signature(obj).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _settings():
    from fmriflow.datasets.regions import build_dataset
    from fmriflow.datasets.splits import make_splits
    from fmriflow.datasets.voxels import build_voxel_dataset
    from fmriflow.denoise import DenoiseSettings
    from fmriflow.finetune.settings import FinetuneSettings, TrainSettings
    from fmriflow.parcellate import parcellate, parcellate_many
    from fmriflow.training.config import TrainConfig

    return [("denoise", DenoiseSettings), ("pretrain", TrainConfig), ("parcellate", parcellate),
            ("parcellate", parcellate_many), ("dataset", build_dataset), ("dataset", make_splits),
            ("voxel", build_voxel_dataset), ("finetune", FinetuneSettings), ("finetune", TrainSettings)]


# A library parameter named like a config key that means something else: not a second default.
SAME_NAME_OTHER_MEANING = {
    ("dataset", "build_dataset", "seed"): "None: the seed recorded with the splits (splits.attrs)",
    ("dataset", "make_splits", "stratify"): "the labels themselves, not the participants column's name",
}


def _disagreements(section: str, obj) -> tuple[list[str], int]:
    """(disagreeing defaults of ``obj`` with the ``section`` of the schema, number compared)."""
    schema, library = _schema_defaults(section), _library_defaults(obj)
    problems, compared = [], 0
    for key in sorted(set(schema) & set(library)):
        if (section, obj.__name__, key) in SAME_NAME_OTHER_MEANING:
            continue
        value = list(library[key]) if isinstance(library[key], tuple) else library[key]
        compared += 1
        if value != schema[key]:
            problems.append(f"{obj.__name__}.{key} defaults to {library[key]!r}; {section}.{key} to {schema[key]!r}")
    return problems, compared


def test_library_defaults_equal_the_schema_defaults():
    problems, compared = [], 0
    for section, obj in _settings():
        found, n = _disagreements(section, obj)
        assert n, f"{obj.__name__} shares no key with the {section} section"
        problems += found
        compared += n
    assert problems == []
    assert compared >= 40


def test_defaults_check_catches_a_disagreement():
    @dataclasses.dataclass
    class Drifted:
        strategy: str = "24P"
        high_pass: float = 0.01
        unrelated: int = 3

    assert _disagreements("denoise", Drifted) == (["Drifted.strategy defaults to '24P'; denoise.strategy to '36P'"], 2)


def test_shipped_config_holds_the_schema_defaults():
    """config/config.yaml (the file for a user's data) and the schema agree on every value but the
    dataset's path, which has no default; the demo's own values live in config/demo.yaml."""
    config = yaml.safe_load((SCHEMA.parents[2] / "config" / "config.yaml").read_text())
    schema = yaml.safe_load(SCHEMA.read_text())

    def differences(section: dict, spec: dict, where: str) -> list[str]:
        found = []
        for key, value in section.items():
            sub = spec["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                found += differences(value, sub, f"{where}{key}.")
            elif sub.get("default", "<no default>") != value:
                found.append(f"{where}{key}: {value!r} in config.yaml, {sub.get('default', '<no default>')!r} in the schema")
        return found

    assert differences(config, schema, "") == ["bids_dir: 'data/bids' in config.yaml, '<no default>' in the schema"]


def test_rules_unpack_shaping_into_their_params():
    """``shaping()`` returns ``config`` and one tracking param per entry: a rule that writes
    ``config=shaping(...)`` would hand its script a dict of those, and track nothing."""
    offenders = [f"{path.name}:{n}" for path in sorted((SRC.parent / "workflow" / "rules").glob("*.smk"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\w+\s*=\s*shaping(_all)?\(", line)]
    assert not offenders, f"use `**shaping(...)` in params: {offenders}"
