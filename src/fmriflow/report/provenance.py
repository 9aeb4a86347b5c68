"""Provenance section: how to reproduce the run (code, software, config, input checksums)."""

from __future__ import annotations

import subprocess

import yaml

from .. import __version__
from ..io import sha256sum
from ..provenance import software_versions
from .html import details, esc, key_value_table, name, table


def provenance_section(config, files, manifest_path, inputs) -> str:
    versions = dict(software_versions())
    for package in ("matplotlib", "nilearn", "snakemake"):
        versions.setdefault(package, _version(package))
    git = git_commit()
    code = (f"code: <code>{esc(git)}</code>" if git
            else "code: no git commit recorded (the workflow did not run from a git checkout)")
    parts = [
        f"<p>fmriflow {esc(__version__)}; {code}. To reproduce: check out that commit, install with "
        "<code>make install</code>, put the configuration below in a file and run "
        "<code>snakemake --profile profiles/local --configfile &lt;file&gt;</code> on the raw BIDS files listed below "
        "(their sha256 must match).</p>",
        "<h3>Software</h3>",
        key_value_table(versions, table_id="software"),
        "<h3>Configuration</h3>",
        f"<pre>{esc(config_yaml(config))}</pre>" if config is not None else "<p>No configuration was given.</p>",
        "<h3>Report inputs</h3>",
        table(["File", "sha256"], [(p, sha256sum(p)) for p in inputs], table_id="report-inputs", scroll=True),
    ]
    columns = [c for c in ("path", "sha256", "subject", "session", "task", "run", "suffix", "shape", "tr") if c in files]
    parts.append(details(
        f"Raw BIDS inputs: {len(files)} files with sha256 (from {name(manifest_path)})",
        table(columns, files[columns].itertuples(index=False), table_id="manifest"),
    ))
    return "\n".join(parts)


def config_yaml(config) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    """The commit of the git checkout in the working directory (with a note if it has changes), or None."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = " (with uncommitted changes)" if status.stdout.strip() else ""
    return f"git commit {commit.stdout.strip()}{dirty}"
