#!/usr/bin/env bash
# Converge playbooks/install.yml into a throwaway unprivileged Debian 12 systemd container:
# check mode on the fresh host, converge, idempotence (second run changes nothing), check and
# diff mode on the converged host (token never shown), a few assertions, uninstall, reinstall
# (same FIREZONE_ID), purge. No portal is reachable there, so verify (/readyz) is off.
#
# Usage: tools/smoke_container.sh [--keep]
# Needs: podman, debootstrap (tools/build_image.sh), the wheel built from this repository.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CONTAINERS_CONF="$root/tools/containers.conf"
export ANSIBLE_CONFIG="$root/ansible.cfg"
bin="$root/.venv/bin"
name=fzgw-smoke
keep=${1:-}

# Logs, inventory and the dummy token stay in .cache/smoke for inspection (gitignored).
work="$root/.cache/smoke"
rm -rf "$work"
mkdir -p "$work"
cleanup() {
  [ "$keep" = "--keep" ] || podman rm -f "$name" >/dev/null 2>&1 || true
  rm -f "$work/secret.yml"
}
trap cleanup EXIT

tools/build_wheelhouse.sh "$work/wheelhouse" >/dev/null 2>&1
version=$("$bin/python" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open("gateway_pkg/__init__.py").read()).group(1))')
image=$(tools/build_image.sh)

podman rm -f "$name" >/dev/null 2>&1 || true
podman run -d --name "$name" --hostname "$name" \
  --cap-add NET_ADMIN --device /dev/net/tun \
  --sysctl net.ipv4.ip_forward=1 --sysctl net.ipv4.conf.all.src_valid_mark=1 \
  --sysctl net.ipv6.conf.all.disable_ipv6=0 --sysctl net.ipv6.conf.all.forwarding=1 \
  --sysctl net.ipv6.conf.default.forwarding=1 \
  "$image" >/dev/null
for _ in $(seq 50); do
  state=$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 0.2
done

token="smoke-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf 'firezone_gateway_token: "%s"\n' "$token" > "$work/secret.yml"
cat > "$work/inventory.ini" <<INV
[firezone_gateways]
$name ansible_connection=containers.podman.podman ansible_python_interpreter=/usr/bin/python3
INV
args=(-i "$work/inventory.ini" -e "@$work/secret.yml" -e firezone_gateway_verify=false
      -e "firezone_gateway_version=$version" -e "firezone_gateway_wheelhouse_dir=$work/wheelhouse")

run() {  # run LABEL PLAYBOOK [ansible-playbook args...]; keeps the output in $work/LABEL.log
  local label=$1 playbook=$2; shift 2
  echo "== $label"
  if ! "$bin/ansible-playbook" "${args[@]}" "$playbook" "$@" > "$work/$label.log" 2>&1; then
    tail -n 40 "$work/$label.log"; echo "FAILED: $label"; exit 1
  fi
  grep -A1 '^PLAY RECAP' "$work/$label.log" | tail -n 1
  if grep -q -- "$token" "$work/$label.log"; then echo "FAILED: $label printed the token"; exit 1; fi
}
changed() { grep -A1 '^PLAY RECAP' "$work/$1.log" | tail -n 1 | sed -n 's/.*changed=\([0-9]*\).*/\1/p'; }

run check-fresh playbooks/install.yml --check --diff
run converge playbooks/install.yml --diff
run idempotence playbooks/install.yml
[ "$(changed idempotence)" = 0 ] || { echo "FAILED: second run changed something"; grep -B3 '^changed' "$work/idempotence.log"; exit 1; }
run check-converged playbooks/install.yml --check --diff
[ "$(changed check-converged)" = 0 ] || { echo "FAILED: check mode on the converged host reports changes"; exit 1; }

echo "== assertions"
x() { podman exec "$name" "$@"; }
never() { if x "$@" >/dev/null 2>&1; then echo "FAILED: should not succeed: $*"; exit 1; fi; }
x systemctl is-active firezone-gateway.service
x stat -c '%U:%G %a %n' /etc/firezone/gateway-token /etc/firezone/gateway-env /var/lib/firezone/gateway_id \
  /opt/firezone-gateway/current/bin/python-cap-net-admin
x getcap /opt/firezone-gateway/current/bin/python-cap-net-admin
# The launcher gives members of firezone CAP_NET_ADMIN (0x1000) and nobody else can run it.
x sudo -u firezone /opt/firezone-gateway/current/bin/firezone-gateway-cap --version
x sudo -u firezone /opt/firezone-gateway/current/bin/python-cap-net-admin \
  -c 'print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])' | grep -qx 0000000000001000
never sudo -u nobody /opt/firezone-gateway/current/bin/firezone-gateway-cap --version
id1=$(x cat /var/lib/firezone/gateway_id)
echo "FIREZONE_ID $id1"
[[ "$id1" =~ ^[0-9a-f]{64}$ ]] || { echo "FAILED: ID is not 64 hex"; exit 1; }
x grep -q "FIREZONE_ID=\"$id1\"" /etc/firezone/gateway-env
never grep -rq -- "$token" /etc/firezone/gateway-env /etc/systemd/system/firezone-gateway.service
pid=$(x systemctl show -P MainPID firezone-gateway.service)
x grep -E '^(CapEff|CapBnd|CapAmb)' "/proc/$pid/status"
never sh -c "tr '\0' '\n' < /proc/$pid/environ | grep -q FIREZONE_TOKEN"
x iptables -S FORWARD | grep tun-firezone
x iptables -t nat -S POSTROUTING | grep MASQUERADE

echo "== token change restarts, nothing else changes"
before=$(x systemctl show -P ExecMainStartTimestampMonotonic firezone-gateway.service)
printf 'firezone_gateway_token: "%s-rotated"\n' "$token" > "$work/secret.yml"
run rotate playbooks/install.yml
after=$(x systemctl show -P ExecMainStartTimestampMonotonic firezone-gateway.service)
[ "$before" != "$after" ] || { echo "FAILED: token change did not restart"; exit 1; }

echo "== uninstall keeps ID and token; reinstall reuses the ID"
run uninstall playbooks/uninstall.yml
x test -f /var/lib/firezone/gateway_id
x test -f /etc/firezone/gateway-token
never test -e /opt/firezone-gateway
run reinstall playbooks/install.yml
[ "$(x cat /var/lib/firezone/gateway_id)" = "$id1" ] || { echo "FAILED: ID changed on reinstall"; exit 1; }

run purge playbooks/uninstall.yml -e firezone_gateway_purge=true
never test -e /var/lib/firezone
never test -e /etc/firezone
never getent passwd firezone
echo "smoke test passed (logs in $work)"
