"""The on-disk store shared by the region and voxel datasets.

A dataset folder is built in a hidden temporary folder beside its final place and renamed
onto it only once complete (``building_dir``), so a killed build leaves nothing that looks
like a dataset. Its large arrays are ``.npy`` files, reserved on disk before they are
written through a memory map (``reserve``) and mapped again, once per process, when read
(``MemoryMapped``). Every folder holds a ``dataset_card.json`` (``load_card``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ..io import read_json

CARD = "dataset_card.json"


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def building_dir(out_dir: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``out_dir``: renamed onto it if the block succeeds, removed if not."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("tmp", "old"):  # folders a killed build left behind
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*.{suffix}"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; an existing ``out`` is moved aside first, then removed."""
    if not out.exists():
        os.replace(new, out)
        return
    graveyard = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, graveyard / "old")
    os.replace(new, out)
    shutil.rmtree(graveyard)


def reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: on a full disk this raises ENOSPC here,
    where writing through the map later would kill the process with SIGBUS."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no reservation, a full disk shows as SIGBUS
        return
    with open(path, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


# --------------------------------------------------------------------------- reading


class MemoryMapped:
    """Opens the ``.npy`` files named in ``mapped_files`` (under ``self.root``) as memory maps, once per process.

    A pickled copy (a DataLoader worker's) carries no maps and opens its own on first use.
    """

    mapped_files: tuple[str, ...] = ()
    _arrays: tuple[np.ndarray, ...] | None = None
    _pid: int | None = None

    def _open(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = tuple(np.load(self.root / name, mmap_mode="r") for name in self.mapped_files)
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # each process maps the files itself
        state["_pid"] = None
        return state


def existing(root: str | Path, name: str, what: str) -> Path:
    """``root / name``, which must be a file; ``what`` says which folder ``root`` should be.

    ``what`` completes "not a ...", e.g. "voxel dataset folder written by fmriflow.datasets.voxels".
    """
    path = Path(root) / name
    if not path.is_file():
        raise InputError(path, f"missing: not a {what}")
    return path


def load_card(root: str | Path, what: str) -> dict[str, Any]:
    """The ``dataset_card.json`` of a dataset folder (``what``: as for ``existing``)."""
    return read_json(existing(root, CARD, what))
