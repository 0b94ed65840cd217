#!/usr/bin/env bash
# Installs every system dependency of kvserve from Debian 12 packages. Idempotent: packages that
# are already installed are skipped, and apt is not touched at all when nothing is missing.
# Used by the README, by .ci/run and by the Dockerfile alike.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --runtime  only the shared libraries the kvserve binary needs
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libabsl-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev libbenchmark-dev
  libxxhash-dev prometheus-cpp-dev libicu-dev
  python3-grpcio python3-protobuf openssl prometheus
  python3
  clang libclang-rt-14-dev clang-format clang-tidy
  nlohmann-json3-dev python3-jinja2 python3-numpy
  libboost-dev libssl-dev luajit curl
)
runtime_pkgs=(
  libabsl20220623 libspdlog1.10 libfmt9 libyaml-cpp0.7 libgrpc++1.51 libgrpc29 libprotobuf32
  libxxhash0 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 ca-certificates libicu72 libssl3
)

pkgs=("${build_pkgs[@]}")
if [[ "${1:-}" == "--runtime" ]]; then
  pkgs=("${runtime_pkgs[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
