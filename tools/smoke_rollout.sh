#!/usr/bin/env bash
# Proves the failure path of playbooks/site.yml in two throwaway containers: both run
# version A; a rollout of version B (serial 1) fails the health gate on the first host (no
# portal is reachable, so /readyz never answers 200), that host is rolled back to A, the
# fleet report is printed, and the second host is never touched.
#
# Usage: tools/smoke_rollout.sh [--keep]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CONTAINERS_CONF="$root/tools/containers.conf"
export ANSIBLE_CONFIG="$root/ansible.cfg"
bin="$root/.venv/bin"
keep=${1:-}
hosts=(fzgw-roll-1 fzgw-roll-2)
work="$root/.cache/rollout"
rm -rf "$work"
mkdir -p "$work"
cleanup() { [ "$keep" = "--keep" ] || podman rm -f "${hosts[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Version A is this repository; version B is a copy with a bumped local version.
version_a=$("$bin/python" -c 'import re; print(re.search(r"__version__ = \"([^\"]+)\"", open("gateway_pkg/__init__.py").read()).group(1))')
version_b="$version_a.post1"
tools/build_wheelhouse.sh "$work/wheelhouse-a" >/dev/null 2>&1
mkdir -p "$work/src-b"
cp -r pyproject.toml README.md gateway_pkg "$work/src-b/"
sed -i "s/^__version__ = .*/__version__ = \"$version_b\"/" "$work/src-b/gateway_pkg/__init__.py"
PROJECT_DIR="$work/src-b" tools/build_wheelhouse.sh "$work/wheelhouse-b" >/dev/null 2>&1

image=$(tools/build_image.sh)
for host in "${hosts[@]}"; do
  podman rm -f "$host" >/dev/null 2>&1 || true
  podman run -d --name "$host" --hostname "$host" --cap-add NET_ADMIN --device /dev/net/tun \
    --sysctl net.ipv4.ip_forward=1 --sysctl net.ipv4.conf.all.src_valid_mark=1 \
    --sysctl net.ipv6.conf.all.disable_ipv6=0 --sysctl net.ipv6.conf.all.forwarding=1 \
    --sysctl net.ipv6.conf.default.forwarding=1 "$image" >/dev/null
done
sleep 2
{
  echo "[firezone_gateways]"
  for host in "${hosts[@]}"; do
    echo "$host ansible_connection=containers.podman.podman ansible_python_interpreter=/usr/bin/python3"
  done
} > "$work/inventory.ini"
printf 'firezone_gateway_token: "rollout-smoke-token"\n' > "$work/secret.yml"
args=(-i "$work/inventory.ini" -e "@$work/secret.yml")

echo "== install version $version_a on both (verify off: no portal here)"
"$bin/ansible-playbook" "${args[@]}" playbooks/install.yml -e firezone_gateway_verify=false \
  -e "firezone_gateway_version=$version_a" -e "firezone_gateway_wheelhouse_dir=$work/wheelhouse-a" \
  > "$work/install-a.log" 2>&1 || { tail -n 30 "$work/install-a.log"; exit 1; }
grep -A2 '^PLAY RECAP' "$work/install-a.log" | tail -n 2

echo "== roll out version $version_b, serial 1, health-gated (must fail on the first host)"
if "$bin/ansible-playbook" "${args[@]}" playbooks/site.yml -e firezone_gateway_serial=1 \
     -e firezone_gateway_verify_timeout=12 -e firezone_gateway_verify_journal_lines=5 \
     -e firezone_gateway_upgrade=true -e "firezone_gateway_version=$version_b" \
     -e "firezone_gateway_wheelhouse_dir=$work/wheelhouse-b" \
     > "$work/site-b.log" 2>&1; then
  echo "FAILED: the rollout succeeded although no host can become ready"; exit 1
fi
sed -n '/Fleet report | Print/,/^$/p' "$work/site-b.log" | head -n 12
grep -A3 '^PLAY RECAP' "$work/site-b.log" | tail -n 3

a1=$(podman exec fzgw-roll-1 readlink /opt/firezone-gateway/current)
p1=$(podman exec fzgw-roll-1 readlink /opt/firezone-gateway/previous)
a2=$(podman exec fzgw-roll-2 readlink /opt/firezone-gateway/current)
echo "fzgw-roll-1 current=$a1 previous=$p1; fzgw-roll-2 current=$a2"
[ "$a1" = "$version_a" ] || { echo "FAILED: first host not rolled back"; exit 1; }
[ "$a2" = "$version_a" ] || { echo "FAILED: second host was touched"; exit 1; }
if podman exec fzgw-roll-2 test -e "/opt/firezone-gateway/$version_b"; then
  echo "FAILED: second host got version $version_b"; exit 1
fi
podman exec fzgw-roll-1 systemctl is-active firezone-gateway.service
echo "rollout smoke test passed (logs in $work)"
