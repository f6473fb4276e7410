#!/usr/bin/env bash
# Build the wheelhouse the firezone_gateway role installs from: the firezone-gateway-py wheel
# plus wheels of all its runtime dependencies, and SHA256SUMS over them. Hosts then need no
# package index (pip install --no-index --find-links).
#
# Usage: tools/build_wheelhouse.sh [OUT_DIR]            (default: dist/wheelhouse)
# Environment:
#   PYTHON                 interpreter whose pip builds the wheels (default: .venv/bin/python)
#   TARGET_PLATFORM        e.g. manylinux2014_aarch64: download binary dependency wheels for
#   TARGET_PYTHON_VERSION  hosts unlike the controller (default 3.11, Debian 12's Python)
#   PROJECT_DIR            source tree to build (default: this repository)
# Without TARGET_PLATFORM the dependencies are resolved for the controller, which must then
# match the hosts (CPU architecture, Python minor version).
# The project's wheel carries the optional C extension gateway_pkg._native when the controller
# has a C compiler and the Python headers (cp311-abi3-linux_<arch>: any CPython >= 3.11 of that
# architecture), else it is pure (py3-none-any). With TARGET_PLATFORM it is built pure
# (FIREZONE_BUILD_NATIVE=0): the controller cannot compile for another architecture. Set
# FIREZONE_BUILD_NATIVE=0 to build it pure in any case.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/dist/wheelhouse"}
python=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$python" ] || python=python3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/wheels"

# The project itself (no dependencies: those are resolved below, for the target).
if [ -n "${TARGET_PLATFORM:-}" ]; then export FIREZONE_BUILD_NATIVE=0; fi
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/build" "${PROJECT_DIR:-$root}"
wheel=$(find "$work/build" -maxdepth 1 -name 'firezone_gateway_py-*.whl' -print -quit)
[ -n "$wheel" ] || { echo "build_wheelhouse: no firezone_gateway_py wheel was built" >&2; exit 1; }
cp "$wheel" "$work/wheels/"

if [ -n "${TARGET_PLATFORM:-}" ]; then
  "$python" -m pip download --quiet --only-binary=:all: \
    --platform "$TARGET_PLATFORM" --python-version "${TARGET_PYTHON_VERSION:-3.11}" \
    --implementation cp --dest "$work/wheels" "$wheel"
else
  "$python" -m pip wheel --quiet --wheel-dir "$work/wheels" "$wheel"
fi

(cd "$work/wheels" && sha256sum -- *.whl > SHA256SUMS && sha256sum --check --quiet --strict SHA256SUMS)

# Replace the output directory as a whole, so SHA256SUMS always lists exactly its wheels.
mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
cp -r "$work/wheels" "$out.new"
rm -rf "$out"
mv "$out.new" "$out"

version=$(basename "$wheel" | cut -d- -f2)
echo "wheelhouse $out: firezone-gateway-py $version, $(grep -c . "$out/SHA256SUMS") wheels ($(basename "$wheel"))"
echo "install with: -e firezone_gateway_version=$version -e firezone_gateway_wheelhouse_dir=$out"
