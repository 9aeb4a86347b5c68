"""Provenance sidecars and dataset descriptions.

Every artefact gets a JSON sidecar recording the step, its inputs (path and sha256), its
own sha256, its parameters, the config section that shaped it and the software versions. Sidecars
carry no timestamps or host names, so a rerun from the same inputs gives byte-identical
sidecars too; when a job ran is in Snakemake's logs.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import CODE_URL, __version__
from .io import read_json, sha256sum, write_json

# The packages whose versions can change an artefact's numbers.
_PACKAGES = ("numpy", "scipy", "pandas", "nibabel", "nilearn", "pybids", "snakemake", "torch")

BIDS_VERSION = "1.10.0"


def software_versions() -> dict[str, str]:
    versions = {"fmriflow": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sidecar_path(artefact: str | Path) -> Path:
    """The JSON sidecar of an artefact: same name, extension replaced by ``.json``."""
    artefact = Path(artefact)
    name = artefact.name
    if name.endswith(".json"):
        raise ValueError(f"{artefact}: a JSON artefact carries its provenance inside, not in a sidecar")
    for ext in (".nii.gz", ".tsv.gz", ".nii", ".tsv", ".npy", ".html", ".png", ".svg", ".pt", ".csv"):
        if name.endswith(ext):
            return artefact.with_name(name[: -len(ext)] + ".json")
    return artefact.with_name(name + ".json")


def describe_inputs(paths: Iterable[str | Path], known: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Path (as given, so relative paths stay relative) and sha256 of each input file;
    ``known``: path -> sha256 already computed (a manifest's), not read again."""
    known = known or {}
    return [{"path": str(p), "sha256": known.get(str(p)) or sha256sum(p)} for p in paths]


def build_sidecar(
    step: str,
    inputs: Iterable[str | Path],
    parameters: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    metadata_fields: Mapping[str, Any] | None = None,
    known: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    inputs = [str(p) for p in inputs]
    sidecar: dict[str, Any] = dict(metadata_fields or {})
    sidecar["Sources"] = inputs
    sidecar["Provenance"] = {
        "Step": step,
        "Inputs": describe_inputs(inputs, known),
        "Parameters": dict(parameters or {}),
        "Config": dict(config or {}),
        "Software": software_versions(),
    }
    return sidecar


def write_sidecar(artefact: str | Path, step: str, inputs: Iterable[str | Path], *,
                  also: Iterable[str | Path] = (), **kwargs: Any) -> Path:
    """Write the provenance sidecar of ``artefact`` (written before) and return its path.

    Besides the inputs' checksums it records the artefact's own (``Provenance.Output``),
    so that ``fmriflow audit`` can tell an artefact changed after it was made. ``also``:
    files of the same name that share this sidecar (a matrix as TSV and NPY), recorded
    under ``Provenance.Outputs``.
    """
    path = sidecar_path(artefact)
    sidecar = build_sidecar(step, inputs, **kwargs)
    sidecar["Provenance"]["Output"] = {"path": str(artefact), "sha256": sha256sum(artefact)}
    also = [{"path": str(p), "sha256": sha256sum(p)} for p in also]
    if also:
        sidecar["Provenance"]["Outputs"] = also
    write_json(path, sidecar)
    return path


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, order-independent hash of a config mapping."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def write_dataset_description(root: str | Path, config: Mapping[str, Any], name: str = "fmriflow") -> Path:
    """Write ``dataset_description.json`` of a derivatives root, as BIDS-Derivatives asks.

    Refuses to mix outputs: if the root already holds outputs of another fmriflow
    version, the error says so instead of silently interleaving them.
    """
    path = Path(root) / "dataset_description.json"
    if path.exists():
        old = read_json(path)
        old_version = next(
            (g.get("Version") for g in old.get("GeneratedBy", []) if g.get("Name") == "fmriflow"), None
        )
        if old_version not in (None, __version__):
            raise RuntimeError(
                f"{path}: written by fmriflow {old_version}, this is {__version__}; "
                "use a fresh output folder so results of two versions are not mixed"
            )
    description = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "fmriflow",
                "Version": __version__,
                "CodeURL": CODE_URL,
                "ConfigurationHash": config_hash(config),
            }
        ],
    }
    write_json(path, description)
    return path
