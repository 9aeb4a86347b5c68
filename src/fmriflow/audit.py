"""``fmriflow audit FILE``: walk an artefact's provenance back to the raw inputs, verifying every checksum.

Where provenance lives (fmriflow.provenance):

- an artefact's JSON sidecar (same name, ``.json``): ``Provenance.Inputs`` (path and sha256
  of each input) and ``Provenance.Output`` (the artefact's own path and sha256; files of the
  same name sharing the sidecar, a matrix as TSV and NPY, under ``Provenance.Outputs``);
- inside a JSON artefact (``validation.json``, ``dataset_card.json``): ``Provenance``; a
  card's ``Provenance.Outputs`` also gives the checksum of each file of its folder
  (paths relative to the card), which then need no sidecar of their own.

What the audit assumes:

- *Artefact or raw input.* A file inside the results folder (the ``output_dir`` holding
  ``fmriflow/dataset_description.json`` or ``bids/manifest.tsv``, found upwards from FILE,
  or given with ``--results``) is an artefact and must carry provenance; a missing sidecar
  is an error. A file outside it is a raw input (raw BIDS, fMRIPrep outputs, the atlas
  cache, a user's atlas): its checksum is verified and the walk stops there.
- *Paths.* Sidecars record paths as Snakemake gave them: absolute, or relative to the
  folder Snakemake ran in. A results folder that was moved is followed: each sidecar's
  ``Output.path`` (where the artefact was written) against where the artefact is now
  gives the old and new prefix, applied to the inputs it records. That finds every
  artefact, and the raw inputs that moved along with it (the whole project folder moved,
  or relative paths). Raw inputs that moved elsewhere need ``--map OLD=NEW``; relative
  paths that cannot be placed are taken from ``--workdir`` (default: the current folder).
- *Symlinks* (the resample step links BOLD already on the atlas grid) are followed for
  checksums; a broken one is reported as missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from .io import read_json, sha256sum
from .provenance import sidecar_path

_RESULTS_MARKERS = (("fmriflow", "dataset_description.json"), ("bids", "manifest.tsv"))


class AuditFailed(RuntimeError):
    """At least one checksum did not match or a record was missing; the message lists each problem."""


@dataclass
class Node:
    """One file of the provenance tree."""

    path: Path  # where the file is now
    step: str | None = None  # the step that made it; None for a raw input
    record: Path | None = None  # the JSON holding its provenance
    problems: list[str] = field(default_factory=list)
    children: list["Node"] = field(default_factory=list)
    raw: bool = False


@dataclass
class Audit:
    """The result: the tree from FILE down to the raw inputs, and every problem found."""

    root: Node
    problems: list[str]
    n_artefacts: int
    n_raw: int

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(path: str | Path, *, maps: Sequence[tuple[str, str]] = (), workdir: str | Path | None = None,
          results: str | Path | None = None) -> Audit:
    """Verify ``path`` and everything it was made from; never raises for a mismatch (see ``Audit.ok``).

    Parameters
    ----------
    path
        Any artefact under a results folder (or a JSON artefact holding ``Provenance``).
    maps
        ``(old, new)`` path prefixes, applied first to every recorded path (raw inputs
        that moved).
    workdir
        Where relative recorded paths start (the folder Snakemake ran in); default: inferred
        from the artefacts' recorded locations, else the current folder.
    results
        The results folder; default: found upwards from ``path``.
    """
    path = Path(os.path.abspath(path))
    root_dir = Path(os.path.abspath(results)) if results else _find_results(path)
    walker = _Walker(root_dir, list(maps), Path(os.path.abspath(workdir)) if workdir else None)
    tree = walker.visit(path, mapping=None)
    if not os.path.exists(path):
        tree.problems.append(f"{path}: no such file")
    problems = list(dict.fromkeys(p for node in walker.seen.values() for p in node.problems))
    n_raw = sum(node.raw for node in walker.seen.values())
    return Audit(tree, problems, len(walker.seen) - n_raw, n_raw)


def format_tree(result: Audit, *, relative_to: str | Path | None = None) -> str:
    """The provenance tree as text, one file per line, each marked ok or FAILED."""
    base = Path(os.path.abspath(relative_to or os.getcwd()))
    lines: list[str] = []
    shown: set[Path] = set()

    def name(p: Path) -> str:
        rel = os.path.relpath(p, base)
        return p.as_posix() if rel.startswith("..") else rel

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        mark = "ok" if not node.problems else "FAILED"
        what = "raw input" if node.raw else f"{node.step or '?'}"
        branch = "" if top else ("`-- " if last else "|-- ")
        repeat = node.path in shown and node.children
        lines.append(f"{prefix}{branch}{name(node.path)}  [{what}] {mark}{'  (inputs shown above)' if repeat else ''}")
        if repeat:
            return
        shown.add(node.path)
        child_prefix = prefix + ("" if top else ("    " if last else "|   "))
        for i, child in enumerate(node.children):
            walk(child, child_prefix, i == len(node.children) - 1, False)

    walk(result.root, "", True, True)
    summary = (f"{result.n_artefacts} artefact(s) and {result.n_raw} raw input(s) checked: "
               + ("every checksum matches" if result.ok else f"{len(result.problems)} problem(s)"))
    return "\n".join([*lines, summary])


def _find_results(path: Path) -> Path | None:
    for folder in path.parents:
        if any((folder.joinpath(*marker)).is_file() for marker in _RESULTS_MARKERS):
            return folder
    return None


def _under(path: PurePosixPath, prefix: PurePosixPath) -> bool:
    if path.is_absolute() != prefix.is_absolute():
        return False
    parts = tuple(p for p in prefix.parts if p != ".")
    return path.parts[: len(parts)] == parts


def _moved(recorded: str, actual: Path) -> tuple[PurePosixPath, Path] | None:
    """(old prefix, new prefix) that turns the recorded location of a file into its present one."""
    rec, now = PurePosixPath(recorded).parts, actual.parts
    n = 0
    while n < min(len(rec), len(now)) and rec[-1 - n] == now[-1 - n]:
        n += 1
    if n == 0 or rec == now:  # renamed, or where it was written: nothing to infer
        return None
    return PurePosixPath(*rec[: len(rec) - n]), Path(*now[: len(now) - n])


class _Walker:
    def __init__(self, results: Path | None, maps: list[tuple[str, str]], workdir: Path | None):
        self.results, self.maps, self.workdir = results, maps, workdir
        self.seen: dict[Path, Node] = {}
        self.digests: dict[str, str] = {}

    # -- paths and checksums

    def sha(self, path: Path) -> str:
        real = os.path.realpath(path)
        if real not in self.digests:
            self.digests[real] = sha256sum(real)
        return self.digests[real]

    def resolve(self, recorded: str, mapping: tuple[PurePosixPath, Path] | None) -> Path:
        for old, new in self.maps:
            if recorded == old or recorded.startswith(old.rstrip("/") + "/"):
                return Path(os.path.abspath(new + recorded[len(old):]))
        path = PurePosixPath(recorded)
        if not path.is_absolute() and self.workdir is not None:
            return Path(os.path.abspath(self.workdir / path))
        if mapping is not None and _under(path, mapping[0]):
            rest = path.parts[len([p for p in mapping[0].parts if p != "."]):]
            return Path(os.path.abspath(mapping[1].joinpath(*rest)))
        if path.is_absolute():
            return Path(path)
        # relative, no workdir known: the current folder, else beside the results folder
        # (output_dir "results" in the folder Snakemake ran in)
        candidates = [Path(os.path.abspath(path))]
        if self.results is not None:
            candidates.append(self.results.parent / path)
        return next((c for c in candidates if os.path.exists(c)), candidates[0])

    def is_artefact(self, path: Path) -> bool:
        if self.results is None:  # no results folder known: whatever carries provenance
            return self.provenance(path)[0] is not None
        return _under(PurePosixPath(path), PurePosixPath(self.results))

    # -- provenance records

    def provenance(self, path: Path) -> tuple[Path | None, dict | None, str | None]:
        """(record file, Provenance mapping, own sha256 recorded) of an artefact; Nones when absent."""
        if path.name.endswith(".json"):
            data = _read(path)
            if isinstance(data, dict) and isinstance(data.get("Provenance"), dict):
                return path, data["Provenance"], None
            return None, None, None
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            data = _read(sidecar)
            prov = data.get("Provenance") if isinstance(data, dict) else None
            prov = prov if isinstance(prov, dict) else {}
            return sidecar, prov, _own_checksum(prov, path.name)
        for record in sorted(path.parent.glob("*.json")):  # a card describing the files of its folder
            data = _read(record)
            prov = data.get("Provenance") if isinstance(data, dict) else None
            if isinstance(prov, dict) and (own := _own_checksum(prov, path.name)):
                return record, prov, own
        return None, None, None

    # -- the walk

    def visit(self, path: Path, mapping: tuple[PurePosixPath, Path] | None) -> Node:
        if path in self.seen:
            return self.seen[path]
        node = Node(path, raw=not self.is_artefact(path))
        self.seen[path] = node
        if not os.path.exists(path):  # the caller says where it was recorded
            return node
        if node.raw:
            return node
        record, prov, own = self.provenance(path)
        if record is None:
            expected = f"a Provenance field in {path}" if path.name.endswith(".json") else str(sidecar_path(path))
            node.problems.append(f"{path}: no provenance sidecar (expected {expected})")
            return node
        node.record, node.step = record, prov.get("Step")
        if own is not None:
            self.check(node, own, record)
        elif record != path:
            node.problems.append(f"{path}: its provenance record {record} gives no checksum for it")
        if record != path and record != sidecar_path(path):  # a file of a folder its card describes
            node.children.append(self.visit(record, mapping))
            return node
        for item in [prov.get("Output") or {}, *prov.get("Outputs", [])] if record != path else []:
            if item.get("path") and PurePosixPath(item["path"]).name == path.name:
                mapping = _moved(item["path"], path) or mapping  # where it was written against where it is
                break
        for item in prov.get("Outputs", []) if record == path else []:  # a card's files: checked here
            described = path.parent / PurePosixPath(item["path"]).name
            if os.path.exists(described):
                self.check(Node(described), item["sha256"], record, into=node)
            else:
                node.problems.append(f"{described}: described by {record} but missing")
        for item in prov.get("Inputs", []):
            where = self.resolve(str(item["path"]), mapping)
            child = self.visit(where, mapping)
            if os.path.exists(where):
                self.check(child, item["sha256"], record, recorded_as=item["path"])
            else:
                broken = " (a broken symlink)" if os.path.islink(where) else ""
                child.problems.append(f"{where}: missing{broken}, recorded in {record} as input {item['path']}")
            node.children.append(child)
        return node

    def check(self, node: Node, expected: str, record: Path, recorded_as: str | None = None,
              into: Node | None = None) -> None:
        """Compare a file's sha256 with a recorded one; the problem goes on ``into`` (default: the file's node)."""
        actual = self.sha(node.path)
        if actual != expected:
            role = f"for its input {recorded_as}" if recorded_as else "when it was written"
            (into or node).problems.append(f"{node.path}: sha256 {actual} differs from {expected} recorded in "
                                           f"{record} {role}")


def _own_checksum(prov: dict, name: str) -> str | None:
    """The sha256 a provenance record gives for the file called ``name`` (its Output, or one of its Outputs)."""
    for item in [prov.get("Output") or {}, *prov.get("Outputs", [])]:
        if item.get("path") and PurePosixPath(item["path"]).name == name:
            return item.get("sha256")
    return None


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def parse_maps(items: Iterable[str]) -> list[tuple[str, str]]:
    """``OLD=NEW`` strings as (old, new) pairs."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"--map takes OLD=NEW, got {item!r}")
        pairs.append((old, new))
    return pairs
