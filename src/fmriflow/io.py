"""Atomic, deterministic file writing and checksums.

Every artefact is written to a temporary name in its destination folder and renamed
into place, so a killed job never leaves a file that looks complete (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

_CHUNK = 1 << 20


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (followed through symlinks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# a shared path's temporary files are taken for stale at this age only (no download of a cache file is this slow)
SHARED_STALE_S = 24 * 3600


@contextlib.contextmanager
def atomic_path(path: str | Path, *, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz`` etc.) so that writers
    choosing a format from the extension behave as for the real name. Temporary files
    of ``path`` that a killed writer left (SIGKILL runs no cleanup) are removed first:
    one job writes a given path at a time, so any such file is stale.

    ``shared``: other processes may write the same path at the same time (a cache that several
    jobs fill with the same verified bytes), so only temporary files older than
    ``SHARED_STALE_S`` are taken for stale; each writer renames a whole file, the last one wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    cutoff = time.time() - SHARED_STALE_S if shared else float("inf")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(suffix)}"):
        with contextlib.suppress(FileNotFoundError):  # another writer may rename or remove it meanwhile
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if os.path.lexists(tmp_path):
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON with sorted keys and a trailing newline, so reruns are byte-identical."""
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_tsv(path: str | Path, frame: pd.DataFrame, *, index: bool = False) -> None:
    """Write a TSV with 'n/a' for missing values (the BIDS convention) and full float precision."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index, na_rep="n/a", float_format="%.9g", lineterminator="\n")


def read_tsv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, **kwargs)


def save_nifti(img: Any, path: str | Path) -> None:
    """Save a nibabel image atomically; ``.nii.gz`` through ISA-L's gzip.

    ISA-L level 1 compresses fMRI floats ~8x faster than zlib level 1 (nibabel's
    default) at the same size, and decompresses ~2x faster; any gzip reader reads the
    result. No file name and mtime 0 in the gzip header keep reruns byte-identical.
    """
    import nibabel as nib
    from isal import igzip

    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            with open(tmp, "wb") as raw, igzip.IGzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                fh = BlockWriter(gz)
                img.to_file_map({"header": nib.FileHolder(fileobj=fh), "image": nib.FileHolder(fileobj=fh)})
                fh.close()
        else:
            nib.save(img, tmp)


class BlockWriter(io.RawIOBase):
    """Feeds a compressor in fixed-size blocks, whatever sizes its caller writes.

    ISA-L's gzip stream depends on where writes split the data (measured: 1 MiB writes and
    352-byte writes of the same NIfTI gave streams 445 kB apart), so without this the same
    image could compress to different bytes, and its checksum in every sidecar downstream
    would differ between reruns.
    """

    BLOCK = 1 << 20

    def __init__(self, sink: Any):
        self.sink, self.buffer, self.position = sink, bytearray(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        n = len(data)
        if self.buffer:  # top up the pending block first
            take = min(self.BLOCK - len(self.buffer), n)
            self.buffer += data[:take]
            data = data[take:]
            if len(self.buffer) == self.BLOCK:
                self.sink.write(bytes(self.buffer))
                self.buffer.clear()
        while len(data) >= self.BLOCK:  # whole blocks straight from the caller's memory, no copy
            self.sink.write(data[: self.BLOCK])
            data = data[self.BLOCK:]
        self.buffer += data
        self.position += n
        return n

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self.position:
            raise io.UnsupportedOperation("a compressed stream only moves forward")
        self.write(bytes(target - self.position))  # pad, as a gzip writer does
        return self.position

    def close(self) -> None:
        if not self.closed and self.buffer:
            self.sink.write(bytes(self.buffer))
            self.buffer.clear()
        super().close()


def open_nifti(path: str | Path) -> Any:
    """``nibabel.load`` (lazy: header now, data on access) with an error that names the file."""
    import nibabel as nib

    try:
        return nib.load(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # nibabel raises several types for damaged or foreign files
        from .errors import InputError

        raise InputError(path, f"not a readable NIfTI image ({exc})") from exc


def load_nifti(path: str | Path) -> Any:
    """Load a NIfTI image fully into memory (``.nii.gz`` decompressed with ISA-L)."""
    import nibabel as nib
    from isal import igzip

    from .errors import InputError

    img = open_nifti(path)
    if not str(path).endswith(".gz"):
        return img.__class__(np.asanyarray(img.dataobj), img.affine, img.header)
    try:
        with igzip.open(path, "rb") as fh:
            holder = nib.FileHolder(filename=str(path), fileobj=ChunkedReader(fh))
            data = np.asanyarray(img.__class__.from_file_map({"header": holder, "image": holder}, mmap=False).dataobj)
    except (EOFError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the image data, is the file truncated? ({exc})") from exc
    return nib.Nifti1Image(data, img.affine, img.header)


class ChunkedReader(io.RawIOBase):
    """A reader whose ``readinto`` fills the caller's buffer a few MiB at a time.

    nibabel reads an image's data with one ``readinto`` of its whole size; a decompressing
    reader's own (io.BufferedIOBase's) first reads it all into one bytes object and copies it
    over: twice the image's memory at the peak, and twice the pages for the kernel to map.
    """

    CHUNK = 1 << 24

    def __init__(self, source: Any):
        self.source = source

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.source.seek(offset, whence)

    def tell(self) -> int:
        return self.source.tell()

    def read(self, size: int = -1) -> bytes:
        return self.source.read(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            chunk = self.source.read(min(self.CHUNK, len(view) - done))
            if not chunk:
                break
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
        return done


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
