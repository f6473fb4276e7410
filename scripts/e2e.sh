#!/usr/bin/env bash
# `make e2e`: the Molecule scenarios in podman containers (molecule/; docs/testing.md).
# Installs what it needs on a Debian 12 machine (root): podman and friends from apt, molecule
# and its podman plugin into .venv; builds the images if absent (cached by recipe hash), the
# wheelhouse the role installs and the dev portal wheels of the lab; runs every scenario (or
# those named: scripts/e2e.sh default fleet), prints a timing summary, and for a failing
# scenario the gateway unit's journal of each of its gateway containers. A scenario named
# NAME@13 runs NAME with Debian 13 gateway hosts (E2E_DEBIAN=13; the default is Debian 12).
# Environment: E2E_KEEP=1 keeps a failing scenario's containers for debugging.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CONTAINERS_CONF="$root/tools/containers.conf"
export PATH="$root/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}
prepare_only=0
if [ "${1:-}" = --prepare ]; then prepare_only=1; shift; fi  # deps, images, wheels only (the demo)
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(default default@13 uninstall bake fleet)
declare -A took result
t0=$SECONDS
stamp() { echo "== e2e: $*"; }

# --- dependencies ---------------------------------------------------------------------------
need=()
for pkg in podman runc netavark aardvark-dns debootstrap uidmap slirp4netns fuse-overlayfs \
           containernetworking-plugins iptables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  stamp "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
if ! .venv/bin/python -c 'import molecule, molecule_plugins.podman, ansible_collections.containers.podman' 2>/dev/null; then
  stamp "pip install molecule molecule-plugins[podman] ansible"
  .venv/bin/pip install -q molecule 'molecule-plugins[podman]' 'ansible>=12.3' 2>&1 | grep -v "^WARNING: Location" || true
fi
took[deps]=$((SECONDS - t0))

# --- images and wheels ----------------------------------------------------------------------
t=$SECONDS
stamp "images"
base=$(tools/build_image.sh 12)
lab=$(tools/build_lab_image.sh)
echo "   $base (gateway hosts), $lab (lab and client)"
if [ "$prepare_only" = 0 ]; then  # the demo needs Debian 12 only
  echo "   $(tools/build_image.sh 13) (Debian 13 gateway hosts: NAME@13 scenarios, fleet's gw3)"
fi
took[images]=$((SECONDS - t))

t=$SECONDS
stamp "wheelhouse and the lab's dev portal wheels"
mkdir -p .cache/e2e
tools/build_wheelhouse.sh .cache/e2e/wheelhouse 2>&1 | grep "^wheelhouse "
export E2E_VERSION
E2E_VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' gateway_pkg/__init__.py)
rm -rf .cache/e2e/lab-wheels .cache/e2e/wheelhouse-*
.venv/bin/python -m pip wheel -q --wheel-dir .cache/e2e/lab-wheels '.[devportal]' 2>&1 | grep -v "^WARNING: Location" || true
took[wheels]=$((SECONDS - t))
if [ "$prepare_only" = 1 ]; then exit 0; fi

# --- scenarios ------------------------------------------------------------------------------
journals() {  # the gateway unit's journal of every container of scenario $1
  local c
  for c in $(podman ps -a --filter "label=e2e_scenario=$1" --format '{{.Names}}' | grep -- '-gw' || true); do
    echo "---- journalctl -u firezone-gateway.service on $c (last 80 lines)"
    podman exec "$c" journalctl -u firezone-gateway.service --no-pager -n 80 -o short-iso 2>&1 || true
  done
}
failed=0
for s in "${scenarios[@]}"; do
  t=$SECONDS
  name=${s%@*}
  export E2E_DEBIAN=12
  if [[ $s == *@* ]]; then
    E2E_DEBIAN=${s#*@}
    stamp "molecule test -s $name (E2E_DEBIAN=$E2E_DEBIAN)"
  else
    stamp "molecule test -s $name"
  fi
  log=".cache/e2e/$s.log"
  molecule destroy -s "$name" >/dev/null 2>&1 || true
  if molecule test -s "$name" --destroy=never 2>&1 | tee "$log"; then
    result[$s]=passed
  else
    result[$s]=FAILED
    failed=1
    echo "==== scenario $s failed; full output in $log"
    journals "$name"
  fi
  # Molecule prunes its ephemeral directory on destroy: keep the Ansible logs of the scenario.
  for f in "$HOME"/.ansible/tmp/molecule.*."$name"/*.log; do
    [ -f "$f" ] && cp "$f" ".cache/e2e/$s.$(basename "$f")"
  done
  if [ "${result[$s]}" = passed ] || [ "${E2E_KEEP:-0}" != 1 ]; then
    molecule destroy -s "$name" >/dev/null 2>&1 || true
  else
    echo "   E2E_KEEP=1: containers of $s kept (podman ps --filter label=e2e_scenario=$name; molecule destroy -s $name)"
  fi
  took[$s]=$((SECONDS - t))
done

# --- summary --------------------------------------------------------------------------------
echo
echo "== e2e timing summary"
printf '   %-12s %6s  %s\n' step seconds result
for k in deps images wheels; do printf '   %-12s %6s\n' "$k" "${took[$k]}"; done
for s in "${scenarios[@]}"; do printf '   %-12s %6s  %s\n' "$s" "${took[$s]}" "${result[$s]}"; done
printf '   %-12s %6s\n' total $((SECONDS - t0))
echo "== converge timings (tools/callback_plugins/converge_timer.py)"
for s in "${scenarios[@]}"; do
  grep -h '^converge timing:' ".cache/e2e/$s.log" 2>/dev/null | sed "s/^converge timing: /   $s: /" || true
done
exit $failed
