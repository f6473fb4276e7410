#!/usr/bin/env bash
# Build the wheelhouses the firezone_gateway role installs from, one per target Python: the
# firezone-gateway-py wheel plus wheels of all its runtime dependencies, and SHA256SUMS over
# them, in OUT_DIR/python<X.Y>. Hosts then need no package index (pip install --no-index
# --find-links); the role picks the one for the host's Python (Debian 12: 3.11, Debian 13: 3.13).
#
# Usage: tools/build_wheelhouse.sh [OUT_DIR]            (default: dist/wheelhouse)
# Environment:
#   PYTHON                 interpreter whose pip builds the wheels (default: .venv/bin/python)
#   PYTHON_VERSIONS        the target Pythons (default: "3.11 3.13", Debian 12's and 13's)
#   TARGET_PLATFORM        e.g. manylinux2014_aarch64: binary dependency wheels for hosts of
#                          another CPU architecture
#   PROJECT_DIR            source tree to build (default: this repository)
# For the controller's own Python (same architecture) the dependencies are resolved and built
# by pip as for an install; for the others pip downloads binary wheels for that Python and for
# any glibc from Debian 12's (2.36) down. The project's wheel carries the optional C extension
# gateway_pkg._native when the controller has a C compiler and the Python headers
# (cp311-abi3-linux_<arch>: any CPython >= 3.11 of that architecture, so one wheel serves every
# target), else it is pure (py3-none-any). With TARGET_PLATFORM it is built pure
# (FIREZONE_BUILD_NATIVE=0): the controller cannot compile for another architecture. Set
# FIREZONE_BUILD_NATIVE=0 to build it pure in any case.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/dist/wheelhouse"}
python=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$python" ] || python=python3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The project itself (no dependencies: those are resolved below, for the target).
if [ -n "${TARGET_PLATFORM:-}" ]; then export FIREZONE_BUILD_NATIVE=0; fi
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/build" "${PROJECT_DIR:-$root}"
wheel=$(find "$work/build" -maxdepth 1 -name 'firezone_gateway_py-*.whl' -print -quit)
[ -n "$wheel" ] || { echo "build_wheelhouse: no firezone_gateway_py wheel was built" >&2; exit 1; }

own=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
arch=$("$python" -c 'import platform; print(platform.machine())')
# Every manylinux tag a Debian 12 host (glibc 2.36) accepts (pip does not widen the tag given),
# and linux_<arch>, the tag of the project's own native wheel.
platforms=()
if [ -n "${TARGET_PLATFORM:-}" ]; then
  platforms=(--platform "$TARGET_PLATFORM")
else
  for tag in linux manylinux1 manylinux2010 manylinux2014 $(seq -f 'manylinux_2_%g' 5 36); do
    platforms+=(--platform "${tag}_$arch")
  done
fi

mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
mkdir "$out.new"
for version in ${PYTHON_VERSIONS:-3.11 3.13}; do
  case "$version" in
    3.[0-9]|3.[0-9][0-9]) ;;
    *) echo "build_wheelhouse: PYTHON_VERSIONS has $version, not a Python version such as 3.13" >&2; exit 2 ;;
  esac
  dir="$work/python$version"
  mkdir "$dir"
  cp "$wheel" "$dir/"
  if [ "$version" = "$own" ] && [ -z "${TARGET_PLATFORM:-}" ]; then
    "$python" -m pip wheel --quiet --wheel-dir "$dir" "$wheel"
  else
    "$python" -m pip download --quiet --only-binary=:all: "${platforms[@]}" \
      --python-version "$version" --implementation cp --dest "$dir" "$wheel"
  fi
  (cd "$dir" && sha256sum -- *.whl > SHA256SUMS && sha256sum --check --quiet --strict SHA256SUMS)
  cp -r "$dir" "$out.new/"
done

# Replace the output directory as a whole, so each SHA256SUMS always lists exactly its wheels.
rm -rf "$out"
mv "$out.new" "$out"

version=$(basename "$wheel" | cut -d- -f2)
for dir in "$out"/python*; do
  echo "wheelhouse $dir: firezone-gateway-py $version, $(grep -c . "$dir/SHA256SUMS") wheels ($(basename "$wheel"))"
done
echo "install with: -e firezone_gateway_version=$version -e firezone_gateway_wheelhouse_dir=$out"
