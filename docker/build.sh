#!/usr/bin/env bash
# Build the CPU component image `ftpipe:<version>` (used by `make image` and the container tests).
#
#   docker/build.sh [--cuda] [--tag TAG] [--base IMAGE] [--force]
#
# Works where no container registry is reachable (only PyPI and Debian's apt are):
# - the base image: BASE_IMAGE (default `local/debian:bookworm`); when that local image is missing it
#   is made with `debootstrap --variant=minbase bookworm` + `docker import` (about a minute, once).
#   With a reachable registry, pass `--base debian:bookworm-slim@sha256:...` (the Dockerfile default).
# - torch: `pip download torch==2.13.0 --no-deps` copies the CPU wheel from the local disk (or the pip
#   index) into docker/context/, where the Dockerfile installs it with `--find-links` instead of
#   pulling a multi-GB CUDA build.
# - `docker build --network host`: RUN steps reach PyPI and apt through the host's network.
# An image already tagged with this version and built from the same inputs (a hash of the build
# context files recorded as a label) is kept unless --force is given.
# Needs a running Docker engine: `eval "$(docker/dockerd.sh start)"` starts a private one.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DOCKER="${DOCKER:-docker}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/ftpipe/__init__.py)"
[[ -n "$VERSION" ]] || { echo "build.sh: cannot read __version__ from src/ftpipe/__init__.py" >&2; exit 1; }

DOCKERFILE=docker/Dockerfile
TAG="ftpipe:$VERSION"
BASE_IMAGE="${BASE_IMAGE:-}"
FORCE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cuda) DOCKERFILE=docker/Dockerfile.cuda; TAG="ftpipe:$VERSION-cuda"; shift ;;
        --tag) TAG="$2"; shift 2 ;;
        --base) BASE_IMAGE="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# The CPU image defaults to a local Debian 12 base (made below when missing); the CUDA image to the
# pinned default of its Dockerfile (it needs Docker Hub).
[[ -n "$BASE_IMAGE" ]] || if [[ "$DOCKERFILE" == docker/Dockerfile ]]; then
    BASE_IMAGE=local/debian:bookworm
else
    BASE_IMAGE="$(sed -n 's/^ARG BASE_IMAGE=//p' "$DOCKERFILE")"
fi

command -v "$DOCKER" >/dev/null 2>&1 || { echo "build.sh: no docker CLI; run docker/dockerd.sh start" >&2; exit 1; }
"$DOCKER" version >/dev/null 2>&1 || {
    echo "build.sh: no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); eval \"\$(docker/dockerd.sh start)\"" >&2
    exit 1
}

make_local_debian() {  # a bookworm base image without any registry: debootstrap + docker import
    command -v debootstrap >/dev/null 2>&1 || { echo "build.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
    local rootfs
    rootfs="$(mktemp -d /tmp/ftpipe-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    echo "build.sh: making $BASE_IMAGE with debootstrap (about a minute)" >&2
    local mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/tmp/ftpipe-debootstrap.log 2>&1 || {
        tail -n 20 /tmp/ftpipe-debootstrap.log >&2
        echo "build.sh: debootstrap failed (log: /tmp/ftpipe-debootstrap.log)" >&2
        exit 1
    }
    # What the official debian image also does: security updates on, no apt caches kept.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
}

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ "$BASE_IMAGE" == local/debian:bookworm ]]; then
        make_local_debian
    else
        echo "build.sh: base image $BASE_IMAGE is not local; docker build will try to pull it" >&2
    fi
fi

# Build inputs into docker/context/ (git-ignored). The torch wheel, only for the CPU image (the CUDA
# image takes torch's CUDA build from its index).
mkdir -p docker/context
# First a wheel already on this machine (pip's find-links: no download); else the CPU build from
# PyTorch's CPU index (PyPI's own Linux torch is the multi-GB CUDA build).
if [[ "$DOCKERFILE" == docker/Dockerfile ]] && ! ls docker/context/torch-2.13.0*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip download -q torch==2.13.0 --no-deps --only-binary=:all: --no-index -d docker/context 2>/dev/null \
        || "$PYTHON" -m pip download -q torch==2.13.0 --no-deps --only-binary=:all: \
            --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" -d docker/context
fi
# Dependencies that PyPI has as source only, built into wheels here by the dev venv's pip: in the image's
# venv, seqeval's setup.py fetches its setup_requires (setuptools-scm) without their own dependencies and fails.
for requirement in $(grep -E '^(seqeval|rouge_score)==' docker/constraints.txt); do
    ls "docker/context/${requirement%%==*}-${requirement##*==}-"*.whl >/dev/null 2>&1 \
        || "$PYTHON" -m pip wheel -q --no-deps -w docker/context "$requirement"
done
# The CA bundle pip trusts here: where a TLS-inspecting proxy stands between this machine and PyPI, the
# builder stage's pip needs it too (the final image keeps Debian's own CA certificates).
ca_bundle="${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}"
[[ -n "$ca_bundle" && -f "$ca_bundle" ]] || ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$ca_bundle" ]]; then
    cmp -s "$ca_bundle" docker/context/ca-bundle.crt || cp "$ca_bundle" docker/context/ca-bundle.crt
fi

# Inputs of the image, hashed: an image with this tag and this hash is up to date.
inputs=("$DOCKERFILE" .dockerignore pyproject.toml README.md src components pipelines docker/constraints.txt)
INPUTS_HASH="$(
    {
        git ls-files -co --exclude-standard -- "${inputs[@]}" 2>/dev/null \
            || find "${inputs[@]}" -type f -not -path '*/__pycache__/*'
        find docker/context -type f
    } | sort -u | while read -r path; do sha256sum "$path"; done \
        | { cat; echo "base $BASE_IMAGE"; } | sha256sum | cut -c1-16
)"
if [[ "$FORCE" == 0 ]] \
    && [[ "$("$DOCKER" image inspect -f '{{ index .Config.Labels "io.ftpipe.inputs" }}' "$TAG" 2>/dev/null)" == "$INPUTS_HASH" ]]; then
    echo "build.sh: $TAG is up to date (inputs $INPUTS_HASH)" >&2
    echo "$TAG"
    exit 0
fi

echo "build.sh: building $TAG from $DOCKERFILE on $BASE_IMAGE" >&2
started=$SECONDS
# The classic builder: it runs everywhere the engine does (BuildKit's buildx plugin may be absent).
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" "$DOCKER" build \
    --network host \
    --file "$DOCKERFILE" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "FTPIPE_VERSION=$VERSION" \
    --label "io.ftpipe.inputs=$INPUTS_HASH" \
    --tag "$TAG" \
    . >&2
size="$("$DOCKER" image inspect -f '{{ .Size }}' "$TAG")"
echo "build.sh: built $TAG in $((SECONDS - started)) s, $((size / 1000000)) MB" >&2
echo "$TAG"
