"""GPU parity of fmriflow's Mamba path with mamba-ssm's kernels (benchmarks/mamba_parity.py).

Skipped unless a CUDA device and an importable mamba-ssm build are present (it cannot install on
CPU machines): there it runs the parity script, which fails beyond its fp32 / bf16 tolerances.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmriflow.models.ssm import mamba_ssm_status

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(mamba_ssm_status() is not None, reason=f"mamba-ssm kernels cannot run: {mamba_ssm_status()}")


def test_kernels_and_plain_pytorch_agree():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mamba_parity.py")], capture_output=True, text=True,
                          env=env, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
