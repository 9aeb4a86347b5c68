#!/usr/bin/env bash
# Container check (CI): build the project image from a locally bootstrapped Debian base, then
# run a pipeline step inside it and compare its artefacts with the host's (tests/test_container.py).
#
#   .ci/container-check.sh [base|image|test|all]      (default: all)
#
# Public image registries are unreachable from CI, so the base image is Debian bookworm made by
# debootstrap and `docker import`ed; its tarball is cached in $FMRIFLOW_CACHE (default
# /var/cache/fmriflow) and reused while it exists. The Python packages come from the host's own
# pip set-up (index, extra indexes, find-links: whatever `pip config` and PIP_* say here):
# `pip wheel` fills a wheelhouse with exactly the wheels the host resolves against
# requirements.lock, and the image installs from it with --no-index. No address of this machine's
# package sources is written into the image recipe.
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${1:-all}
CACHE=${FMRIFLOW_CACHE:-/var/cache/fmriflow}
SUITE=bookworm
# minbase plus Debian's Python 3.11 with venv (ensurepip), CA certificates, and procps (`free`,
# which the fmriprep-docker wrapper runs: tests/test_fmriprep.py builds its stub image on this base)
PACKAGES=python3,python3-venv,ca-certificates,procps
BASE_TAR="$CACHE/debian-$SUITE-$(echo "$PACKAGES" | md5sum | cut -c1-8).tar"
BASE_IMAGE=fmriflow-base:$SUITE
IMAGE=${FMRIFLOW_IMAGE:-fmriflow:cpu}
WHEELS=containers/wheels        # git-ignored; the Docker build context sees it
PYTHON=${PYTHON:-.venv/bin/python}  # `make install` makes it
TIMES="$CACHE/container-times.tsv"

mkdir -p "$CACHE"
log() { echo "container-check: $*" >&2; }
timed() {  # timed LABEL CMD...: run CMD, append "LABEL<TAB>seconds" to $TIMES, keep its status
    local label=$1 start status=0; shift
    start=$(date +%s)
    "$@" || status=$?
    printf '%s\t%s\n' "$label" "$(($(date +%s) - start))" | tee -a "$TIMES" >&2
    return "$status"
}

install_tools() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

start_dockerd() {
    docker info >/dev/null 2>&1 && return 0
    log "starting dockerd"
    if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then :; else
        nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    log "dockerd did not answer within 60 s; see $CACHE/dockerd.log"
    return 1
}

# The host's Debian mirror (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if ! [ -s "$BASE_TAR" ]; then
        local root
        root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        timed debootstrap debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$(debian_mirror)"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
        rm -rf "$root"
    fi
    local label='{{index .Config.Labels "fmriflow.base.packages"}}'
    if [ "$(docker image inspect --format "$label" "$BASE_IMAGE" 2>/dev/null)" != "$PACKAGES" ]; then
        timed docker_import docker import --change "LABEL fmriflow.base.packages=$PACKAGES" "$BASE_TAR" "$BASE_IMAGE"
    fi
}

fill_wheelhouse() {
    # Every wheel the image installs, resolved by the host's pip as `make install` resolves them.
    [ -x "$PYTHON" ] || make install
    mkdir -p "$WHEELS"
    # fmriflow's dependencies, antspyx (installed --no-deps) and what building fmriflow needs;
    # fmriflow itself is built in the image from src/, so a code change leaves this layer cached
    timed wheelhouse sh -c "'$PYTHON' -m pip wheel --quiet -w '$WHEELS' -c requirements.lock '.[lite]' \
        && '$PYTHON' -m pip wheel --quiet --no-deps -w '$WHEELS' -c requirements.lock antspyx 'setuptools>=69' wheel \
        && rm -f '$WHEELS'/fmriflow-*.whl"
}

build_image() {
    fill_wheelhouse
    # the legacy builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks
    if ! timed image_build sh -c "DOCKER_BUILDKIT=0 docker build -f containers/Dockerfile \
            --build-arg BASE_IMAGE='$BASE_IMAGE' -t '$IMAGE' . > '$CACHE/image-build.log' 2>&1"; then
        tail -n 40 "$CACHE/image-build.log" >&2
        log "image build failed; full log: $CACHE/image-build.log"
        return 1
    fi
    docker image inspect "$IMAGE" --format 'image {{.RepoTags}}: {{.Size}} bytes' >&2
    # the build stage's image (2.4 GB, with the wheelhouse) is not needed once the image is made
    docker image prune --force --filter label=fmriflow.stage=build >/dev/null
}

run_test() {
    [ -x "$PYTHON" ] || make install
    FMRIFLOW_ATLAS_DIR="${FMRIFLOW_ATLAS_DIR:-$(cd .. && pwd)/shared/data/atlases}" \
        FMRIFLOW_REQUIRE_DOCKER=1 FMRIFLOW_IMAGE="$IMAGE" "$PYTHON" -m pytest -q -rP tests/test_container.py
}

install_tools
start_dockerd
case "$STAGE" in
    base) build_base ;;
    image) build_base; build_image ;;
    test) run_test ;;
    all) build_base; build_image; run_test ;;
    *) log "unknown stage $STAGE (base, image, test, all)"; exit 2 ;;
esac
