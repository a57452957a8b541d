#!/usr/bin/env bash
# CI stage: build the nmbids container image and run the BIDS App inside it end to end.
#
#   bash .ci/container.sh            (as root; called by .ci/run after the unit tests)
#
# There is no Docker engine on CI: the image is built with buildah (vfs storage, chroot
# isolation) from a local Debian bookworm minbase made by debootstrap, a stand-in for the
# public python:3.11-slim-bookworm base (the Dockerfile installs Debian's python3 into it).
# TemplateFlow's S3 host is not reachable from CI, so the image is built with
# FETCH_TEMPLATEFLOW=0 and nmbids runs on nilearn's packaged MNI152 2009a template. Nor is
# osf.io, where nilearn's fetch_atlas_pauli_2017 downloads the CIT168 atlas from: the image is
# built with WITH_CIT168=0 (no CIT168; `--atlas cit168` would stop with exit code 64, and the
# stage runs with the built-in ROIs, the default).
#
# Environment knobs:
#   NMBIDS_CI_CACHE=/var/cache/nmbids-ci   where the base rootfs tarball is kept between runs
#   NMBIDS_CI_REFRESH_BASE=1               rebuild the debootstrap base even if cached
#   NMBIDS_CI_KEEP=1                       keep the scratch data directory (printed at the end)
#   NMBIDS_CI_IMAGE=localhost/nmbids:ci    the tag to build
#   NMBIDS_CI_LOCK=/var/lock/nmbids-ci-container.lock   serialises runs on one machine
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

CACHE=${NMBIDS_CI_CACHE:-/var/cache/nmbids-ci}
BASE_TAR="$CACHE/debian-bookworm-minbase.tar"
BASE_IMAGE=localhost/nmbids-ci/debian:bookworm-minbase
IMAGE=${NMBIDS_CI_IMAGE:-localhost/nmbids:ci}
STORAGE=(--storage-driver vfs)
VERSION=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$REPO/nmbids/__init__.py")

# One container stage at a time on a machine: runs share buildah's storage, and one run's
# pruning would delete another's build containers.
exec 9>"${NMBIDS_CI_LOCK:-/var/lock/nmbids-ci-container.lock}"
if ! flock -n 9; then
    echo "=== [container] another container stage is running here: waiting for it (20 min at most)"
    flock -w 1200 9 || echo "=== [container] the lock is still held (a stray process?): going on"
fi

declare -a TIMINGS=()
T0=$SECONDS
CURRENT=""
CURRENT_T0=0
step() {  # step "name" command...: run, time and record one step
    CURRENT=$1 CURRENT_T0=$SECONDS
    shift
    echo
    echo "=== [container] $CURRENT"
    "$@"
    TIMINGS+=("$(printf '%-34s %5ds' "$CURRENT" $((SECONDS - CURRENT_T0)))")
    CURRENT=""
}

DATA=$(mktemp -d /tmp/nmbids-ci-container.XXXXXX)
CONTAINER=""
summary() {
    local rc=$?
    echo
    echo "=== [container] timings"
    local line
    for line in "${TIMINGS[@]}"; do echo "  $line"; done
    if [[ -n "$CURRENT" ]]; then
        printf '  %-34s %5ds  FAILED\n' "$CURRENT" $((SECONDS - CURRENT_T0))
    fi
    printf '  %-34s %5ds\n' "total" $((SECONDS - T0))
    if [[ -n "$CONTAINER" ]]; then buildah "${STORAGE[@]}" rm "$CONTAINER" >/dev/null 2>&1 || true; fi
    if [[ $rc -ne 0 || -n "${NMBIDS_CI_KEEP:-}" ]]; then
        echo "  scratch data kept in $DATA"
    else
        rm -rf "$DATA"
    fi
    if [[ $rc -eq 0 ]]; then echo "=== [container] OK"; else echo "=== [container] FAILED (exit $rc)"; fi
    exit "$rc"
}
trap summary EXIT

install_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v podman >/dev/null || missing+=(podman)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    buildah --version
}

make_base() {
    if [[ -z "${NMBIDS_CI_REFRESH_BASE:-}" ]] &&
        buildah "${STORAGE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base image $BASE_IMAGE already in storage"
        return
    fi
    if [[ -n "${NMBIDS_CI_REFRESH_BASE:-}" || ! -s "$BASE_TAR" ]]; then
        local rootfs
        rootfs=$(mktemp -d /tmp/nmbids-ci-rootfs.XXXXXX)
        # minbase = what debian:bookworm-slim holds (no python3: the Dockerfile installs it)
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
        cat >"$rootfs/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
        # the same trimming as the official slim images
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
        echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/90nmbids-no-recommends"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/man/* \
            "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        chmod 0755 "$rootfs"   # mktemp made it 0700: the image's / would be unreadable to non-root
        mkdir -p "$CACHE"
        tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$rootfs"
    fi
    podman "${STORAGE[@]}" import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    echo "base image $BASE_IMAGE from $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

build_image() {
    local extra=()
    # This machine reaches PyPI through a TLS-intercepting proxy: hand its CA bundle to pip
    # inside the build. The Dockerfile itself only knows `ARG PIP_CERT`.
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        extra+=(-v /etc/ssl/certs/ca-certificates.crt:/run/hostca.crt:ro
            --build-arg PIP_CERT=/run/hostca.crt)
    fi
    # --force-rm: a failed step must not leave its working container behind, or the prune
    # below fails on the next run ("image is in use by a container")
    local args=(--layers --force-rm --isolation chroot --network host "${extra[@]}"
        --build-arg BASE_IMAGE="$BASE_IMAGE"
        --build-arg FETCH_TEMPLATEFLOW=0
        --build-arg WITH_CIT168=0
        --build-arg VERSION="$VERSION")
    # The builder stage is tagged too, so that pruning dangling images below keeps its cached
    # layers (the dependencies) for the next run; the second call reuses them at once.
    buildah "${STORAGE[@]}" bud "${args[@]}" --target builder -t "$IMAGE-builder" "$REPO"
    buildah "${STORAGE[@]}" bud "${args[@]}" -t "$IMAGE" "$REPO"
}

image_size() {
    local bytes
    bytes=$(buildah "${STORAGE[@]}" inspect --type image --format '{{.Size}}' "$IMAGE" 2>/dev/null ||
        podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$IMAGE")
    echo "image $IMAGE: $((bytes / 1000000)) MB uncompressed ($bytes bytes)"
    podman "${STORAGE[@]}" images "$IMAGE"
}

# `podman run` cannot set rlimits on this machine; `buildah run` works. It runs as the image's
# USER (nmbids, uid 1000) with the image's environment; /data is the scratch directory.
in_image() {
    buildah "${STORAGE[@]}" run --isolation chroot --user 1000:1000 \
        -v "$DATA:/data" "$CONTAINER" -- "$@"
}

check_outputs() {
    local n
    n=$(find "$DATA/out" -maxdepth 1 -name 'sub-*.html' | wc -l)
    ls -l "$DATA/out"
    if ((n != 2)); then
        echo "expected 2 participant reports (sub-*.html) in $DATA/out, found $n" >&2
        return 1
    fi
    find "$DATA/out" -name '*_desc-nm_measures.tsv' | grep -q . ||
        { echo "no measures table written" >&2; return 1; }
    if ! find "$DATA/out/group" -name 'group_*.tsv' 2>/dev/null | grep -q .; then
        echo "no group tables (group/group_*.tsv) written" >&2
        return 1
    fi
    find "$DATA/out/group" -maxdepth 1 -type f | sort
}

step "install buildah/podman/debootstrap" install_tools
step "base image (debootstrap minbase)" make_base
step "build image" build_image
step "image size" image_size
# vfs keeps a full copy of the file system per layer: drop what older builds left (dangling
# images); the layers of this build stay cached for the next run.
step "prune dangling images" buildah "${STORAGE[@]}" rmi --prune

chmod 0777 "$DATA"
CONTAINER=$(buildah "${STORAGE[@]}" from "$IMAGE")
step "nmbids --version" in_image nmbids --version
# a small phantom (as in tests/test_pipeline.py) and fast registration keep this stage short
step "nmbids-simulate (2 subjects)" in_image nmbids-simulate /data/sim --n 2 --seed 1 \
    --t1w-res 1.5 --nm-fov 110x120 --repeats 2
step "participant level" in_image nmbids /data/sim/bids /data/out participant \
    -w /data/work --nprocs 2 --registration-quality fast --notrack
step "group level" in_image nmbids /data/sim/bids /data/out group -w /data/work \
    --n-permutations 100 --notrack
step "check outputs" check_outputs
