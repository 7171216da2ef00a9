#!/usr/bin/env bash
# Prepare a container build on this kind of machine (no Docker daemon, no image registry), from a
# fresh clone with .venv set up (make setup):
#   1. podman, runc and debootstrap (apt-get install when root; otherwise a loud error);
#   2. CONTAINERS_CONF=docker/containers.conf (host network, grantable ulimits, runc) for callers
#      that source this file;
#   3. the base image localhost/debian:bookworm, debootstrapped from the Debian mirror apt uses;
#   4. the wheelhouse docker/wheelhouse/$VARIANT/{deps,app} that the Dockerfile installs from: pip
#      inside a build sees neither this machine's pip configuration nor its local wheels.
# Usage: scripts/container_setup.sh            (VARIANT=cpu; cuda and ascend: see docs/DEPLOY.md)
#        scripts/container_setup.sh wheels     (step 4 only: then `docker build -t hotswap:cpu .`)
#        source scripts/container_setup.sh     (also exports CONTAINERS_CONF)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VARIANT="${VARIANT:-cpu}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
IMAGE_PYTHON="${IMAGE_PYTHON:-3.11}"   # bookworm's python3; the wheels must be built for it
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/containers.conf}"

die() { echo "container_setup: $*" >&2; exit 1; }

tools() {
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && apt-get install -y -q podman runc debootstrap
    else
        die "missing ${missing[*]}: install them (apt-get install -y podman runc debootstrap)"
    fi
}

mirror() {  # the Debian mirror apt already uses here (deb822 or one-line sources)
    local uri
    uri=$(grep -h -m1 -E '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
    [ -n "$uri" ] || uri=$(grep -h -m1 -E '^deb .*debian/? ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

base_image() {
    podman image exists "$BASE_IMAGE" && return
    if [ "$BASE_IMAGE" != localhost/debian:bookworm ]; then  # a registry image: this host can pull it
        podman pull "$BASE_IMAGE" >/dev/null || die "cannot pull the base image $BASE_IMAGE"
        return
    fi
    local rootfs
    rootfs=$(mktemp -d)
    echo "container_setup: debootstrap bookworm from $(mirror) (about a minute)"
    debootstrap --variant=minbase bookworm "$rootfs" "$(mirror)" >/dev/null
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

wheelhouse() {
    local out="$ROOT/docker/wheelhouse/$VARIANT" stamp have
    have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$have" = "$IMAGE_PYTHON" ] || die "$PYTHON is $have but the image's python is $IMAGE_PYTHON: build the \
wheelhouse with a $IMAGE_PYTHON interpreter (PYTHON=...) so compiled wheels match"
    stamp=$( (cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml"; echo "$VARIANT") | sha256sum | cut -c1-16)
    mkdir -p "$out/app"
    if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$out/deps" && mkdir -p "$out/deps"
        case "$VARIANT" in
            cpu) "$PYTHON" -m pip wheel -q -w "$out/deps" -c "$ROOT/constraints.txt" "$ROOT" ;;
            cuda)  # torch's CUDA build (with its nvidia-* wheels) and onnxruntime-gpu instead of onnxruntime
                "$PYTHON" -m pip wheel -q -w "$out/deps" -c "$ROOT/constraints.txt" \
                    --extra-index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0+cu128" "$ROOT"
                rm -f "$out"/deps/onnxruntime-*.whl
                "$PYTHON" -m pip download -q --no-deps -d "$out/deps" "onnxruntime-gpu==1.31.1" ;;
            ascend)  # torch-npu pairs with its own torch release; onnxruntime-cann replaces onnxruntime
                sed 's/^torch==.*/torch==2.14.0/' "$ROOT/constraints.txt" > "$out/constraints.txt"
                "$PYTHON" -m pip wheel -q -w "$out/deps" -c "$out/constraints.txt" "torch-npu==2.14.0" "$ROOT"
                rm -f "$out"/deps/onnxruntime-*.whl
                "$PYTHON" -m pip download -q --no-deps -d "$out/deps" "onnxruntime-cann==1.24.4" ;;
            *) die "VARIANT must be cpu, cuda or ascend, not $VARIANT" ;;
        esac
        rm -f "$out"/deps/hotswap-*.whl
        echo "$stamp" > "$out/.stamp"
    fi
    # hotswap itself, always fresh: the image serves the working tree's code.
    rm -f "$out"/app/*.whl
    # A fixed timestamp makes the wheel byte-identical while the code is: the build cache then holds.
    SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$out/app" "$ROOT"
    ls "$out"/app/hotswap-*.whl >/dev/null
}

if [ "${1:-all}" = wheels ]; then  # the wheelhouse alone, e.g. for `docker build` on a host with a registry
    wheelhouse
    exit 0
fi
tools
base_image
wheelhouse
echo "container_setup: ready (base $BASE_IMAGE, wheelhouse docker/wheelhouse/$VARIANT, CONTAINERS_CONF=$CONTAINERS_CONF)"
