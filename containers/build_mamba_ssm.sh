#!/usr/bin/env bash
# Build a mamba-ssm wheel from its sdist on an offline CUDA machine, for this GPU only.
#
#   containers/build_mamba_ssm.sh mamba_ssm-2.3.2.post1.tar.gz OUTDIR [ARCH]
#
# mamba-ssm ships as an sdist whose setup.py first tries to download a prebuilt wheel (which
# fails offline) and then compiles for about ten GPU architectures (slow). Forcing the build
# and cutting the list to one architecture (default: the visible GPU's, e.g. 90 on H100/H200)
# builds in about 80 s. The wheel lands in OUTDIR; install it with
# `pip install --no-deps OUTDIR/mamba_ssm-*.whl` (it needs torch, triton, einops, packaging).
set -euo pipefail
sdist=$(realpath "$1")
outdir=$(realpath -m "$2")
arch=${3:-$(python3 -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"{a}{b}")')}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src=$(echo "$work"/mamba_ssm-*)

# Keep exactly one -gencode pair: compute_$arch / sm_$arch.
python3 - "$src/setup.py" "$arch" <<'EOF'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
pair = re.compile(r'cc_flag\.append\("-gencode"\)\n(\s*)cc_flag\.append\("arch=compute_\d+,code=sm_\d+"\)')
seen = []
def keep_first(match):
    seen.append(match)
    if len(seen) > 1:
        return "pass"
    return (f'cc_flag.append("-gencode")\n{match.group(1)}'
            f'cc_flag.append("arch=compute_{arch},code=sm_{arch}")')
text = pair.sub(keep_first, text)
if not seen:
    sys.exit(f"{path}: no -gencode lines found; this script knows mamba-ssm 2.3.x")
open(path, "w").write(text)
EOF

mkdir -p "$outdir"
MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    python3 -m pip wheel --no-build-isolation --no-deps -w "$outdir" "$src"
ls -l "$outdir"
