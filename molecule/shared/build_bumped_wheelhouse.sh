#!/usr/bin/env bash
# Build a wheelhouse whose firezone-gateway-py has another version, without touching the
# repository: copy the source to a temporary directory, bump __version__ there, and run the
# copy's tools/build_wheelhouse.sh. Used by the fleet scenario (upgrade and rollback).
# Usage: molecule/shared/build_bumped_wheelhouse.sh VERSION OUT_DIR     (skips if OUT_DIR exists)
set -euo pipefail
version=${1:?version} out=${2:?out dir}
root=$(cd "$(dirname "$0")/../.." && pwd)
grep -qs "firezone_gateway_py-$version-" "$out"/python*/SHA256SUMS && { echo "$out: exists"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/pyproject.toml" "$root/setup.py" "$root/README.md" "$root/gateway_pkg" "$root/tools" "$work/"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
find "$work/gateway_pkg" -name '*.so' -delete  # the in-place build of `pip install -e .`: built anew
sed -i "s/^__version__ = .*/__version__ = \"$version\"/" "$work/gateway_pkg/__init__.py"
PYTHON="$root/.venv/bin/python" "$work/tools/build_wheelhouse.sh" "$out" 2>&1 | { grep "^wheelhouse " || true; }
