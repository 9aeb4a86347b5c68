"""Failed writes: a full disk leaves every good output as it was, and nothing partial.

The writers (NIfTI through ISA-L, TSV, JSON sidecar, the dataset folder, the training
checkpoint) run in a child process whose writes fail in the kernel, two ways: a tiny tmpfs
that fills up (ENOSPC; needs permission to mount, else that case is skipped) and a file-size
limit (RLIMIT_FSIZE, EFBIG; works for any user). Each writer first replaces a good output of
the same name; afterwards the good output must be byte-identical and no temporary be left.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LIMIT = 1 << 20  # bytes the failing writes may use; every new output is larger

# In the folder argv[1], writes the good outputs (small), then, under a file-size limit of
# argv[2] bytes when it is not 0, replacements that do not fit. Prints, as JSON, the error of
# each replacement (None: it was written) and the checksums of every file before and after.
WRITER = textwrap.dedent('''
    import errno, hashlib, json, resource, signal, sys
    from pathlib import Path
    import nibabel as nib, numpy as np, pandas as pd, torch
    from fmriflow import io, provenance
    from fmriflow.datasets.regions import build_dataset, make_splits
    from fmriflow.training.checkpoint import save_checkpoint
    from fmriflow.training.config import TrainConfig
    from fmriflow.training.distributed import Dist

    folder, limit = Path(sys.argv[1]), int(sys.argv[2])
    n = 8
    rng = np.random.default_rng(0)
    def noise(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def dataset():
        runs = [{"run": f"sub-{s}/func/sub-{s}_task-rest", "tr": 2.0,
                 "timeseries": pd.DataFrame(noise(20 * n, 16), columns=[f"r{i}" for i in range(16)])} for s in ("01", "02")]
        build_dataset(runs, make_splits(["01", "02"], fractions=(0.5, 0.5, 0.0)), folder / "dataset", window=4, stride=1)

    def checkpoint():
        model = torch.nn.Linear(n * 16, n * 16)
        optimizer = torch.optim.AdamW(model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        cfg = TrainConfig(dataset="d", coords="c", out=str(folder))
        save_checkpoint(folder / "checkpoint.pt", model, optimizer, scheduler, 1, cfg, Dist())

    writers = {
        "bold.nii.gz": lambda: io.save_nifti(nib.Nifti1Image(noise(n, n, 4, 8), np.eye(4)), folder / "bold.nii.gz"),
        "table.tsv": lambda: io.write_tsv(folder / "table.tsv", pd.DataFrame(noise(n * 100, 8))),
        "bold.json": lambda: provenance.write_sidecar(folder / "bold.nii.gz", "test", [],
                                                      parameters={"values": noise(n * n * 4).tolist()}),
        "dataset": dataset,
        "checkpoint.pt": checkpoint,
    }
    def digests():
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    for name, write in writers.items():
        write()
    before = digests()
    n = 160  # incompressible noise: tens of kB per good output, over 1 MiB per replacement
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    outcome = {}
    for name, write in writers.items():
        try:
            write()
            outcome[name] = None
        except OSError as exc:  # ENOSPC / EFBIG from write(), or torch's failed save (no errno)
            outcome[name] = errno.errorcode.get(exc.errno, "OSError")
    print(json.dumps({"failed": outcome, "before": before, "after": digests()}))
''')


def _replace_when_full(folder: Path, limit_file_size: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", WRITER, str(folder), str(LIMIT if limit_file_size else 0)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["tmpfs", "rlimit"])
def full_disk(request, tmp_path):
    """(folder, whether writes are size-limited): a 1 MiB tmpfs, or a plain folder under RLIMIT_FSIZE."""
    if request.param == "rlimit":
        yield tmp_path, True
        return
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the rlimit case covers the same writers")
    try:
        yield mount, False
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_failed_writes_keep_good_outputs_and_leave_nothing_partial(full_disk):
    folder, limited = full_disk
    result = _replace_when_full(folder, limited)
    assert {"bold.nii.gz", "table.tsv", "bold.json", "dataset/samples.npy", "checkpoint.pt"} <= set(result["before"])
    failed = result["failed"]
    assert None not in failed.values(), failed  # every writer raised OSError
    # plain writes carry the file system's errno (numpy's and torch's writers may not)
    code = "EFBIG" if limited else "ENOSPC"
    assert [failed[k] for k in ("bold.nii.gz", "table.tsv", "bold.json")] == [code] * 3, failed
    assert result["after"] == result["before"]  # good outputs untouched, nothing added (no temporaries)
    assert [p.name for p in folder.rglob(".*")] == []
