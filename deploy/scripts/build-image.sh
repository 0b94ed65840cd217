#!/usr/bin/env bash
# Builds the kvserve container image with buildah, without a Docker engine:
#   1. makes the base image debian:bookworm with debootstrap (once; skipped when it exists),
#   2. runs `buildah bud --isolation chroot --pull=never` on the repository's Dockerfile.
#
#   deploy/scripts/build-image.sh [--target runtime|runtime-cuda] [--tag kvserve:latest]
#                                 [--jobs N] [--mirror URL] [--rebuild-base]
#
# Needs root (debootstrap, buildah's chroot isolation) and the Debian packages buildah and
# debootstrap (installed here when missing). CPU-heavy: the Release build runs inside; run it with
# `nice`. The runtime-cuda target needs the nvidia/cuda devel image in local storage (or drop
# --pull=never by setting PULL=missing), see the Dockerfile.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

target=runtime
tag=kvserve:latest
jobs="${KVSERVE_JOBS:-$(nproc)}"
mirror=http://deb.debian.org/debian
rebuild_base=0
while (($#)); do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "build-image: run as root (debootstrap and buildah --isolation chroot need it)" >&2
  exit 1
fi
missing=()
for p in buildah debootstrap; do
  command -v "$p" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-image: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

base=docker.io/library/debian:bookworm
if ((rebuild_base)) || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  echo "build-image: making $base with debootstrap from $mirror"
  work="$(mktemp -d /var/tmp/kvserve-base.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror"
  # Security updates too, as the official image has them.
  cat > "$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/archives/"*.deb
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  ctr="$(buildah from scratch)"
  buildah add "$ctr" "$work/rootfs.tar" /
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$ctr"
  buildah commit --rm "$ctr" "$base"
  rm -rf "$work"
  trap - EXIT
fi

# OCI labels org.opencontainers.image.revision and .version (the Dockerfile's VCS_REF, VERSION).
vcs_ref="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
version="$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo unknown)"
if [[ "$version" != *.* ]]; then
  # No release tag yet: the project version from CMakeLists.txt plus the commit.
  project_version="$(sed -n 's/^project(kvserve VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")"
  version="${project_version:-0.0.0}+g${version}"
fi
echo "build-image: building $tag (target $target, $jobs compile jobs, revision $vcs_ref, version $version)"
start=$(date +%s)
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
buildah bud --isolation chroot --pull="${PULL:-never}" --format docker --layers \
  --target "$target" --build-arg "KVSERVE_JOBS=$jobs" --build-arg "VCS_REF=$vcs_ref" \
  --build-arg "VERSION=$version" -t "$tag" -f "$root/Dockerfile" "$root"
echo "build-image: $tag built in $(( $(date +%s) - start )) s"
buildah images "$tag"
