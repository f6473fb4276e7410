#!/usr/bin/env bash
# Render the role's unit template with the role defaults (and any extra -e arguments) into
# OUT_DIR/firezone-gateway.service, the way the role would on a host outside a container.
# Usage: tools/render_unit.sh OUT_DIR [-e var=value ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: render_unit.sh OUT_DIR [-e var=value ...]}
shift
role="$root/roles/firezone_gateway"
bin="$root/.venv/bin"
[ -x "$bin/ansible" ] || bin=$(dirname "$(command -v ansible)")
mkdir -p "$out"
ANSIBLE_CONFIG="$root/ansible.cfg" ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false \
  "$bin/ansible" localhost -c local -m ansible.builtin.template \
  -a "src=$role/templates/firezone-gateway.service.j2 dest=$out/firezone-gateway.service mode=0644" \
  -e "@$role/defaults/main.yml" -e "@$role/vars/main.yml" \
  -e __firezone_gateway_sysctl_write=true "$@" >/dev/null
echo "$out/firezone-gateway.service"
