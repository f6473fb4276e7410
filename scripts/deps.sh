#!/usr/bin/env bash
# Install the Debian packages the tests, the demo and the benchmarks use, once.
# Idempotent: apt runs only when something is missing. Never names a mirror: apt's own
# sources are used as they are.
set -euo pipefail
need=()
for pair in wireguard-go:wireguard-go wg:wireguard-tools unbound:unbound unbound-control:unbound \
            iperf3:iperf3 iptables:iptables ip:iproute2 curl:curl setcap:libcap2-bin setpriv:util-linux \
            python3:python3 ping:iputils-ping shellcheck:shellcheck turnserver:coturn; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The optional C extension gateway_pkg._native (setup.py): a compiler, libc headers, Python.h.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/stdint.h ] || need+=(libc6-dev)
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  2>/dev/null || need+=(libpython3-dev)
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  # --no-install-recommends: wireguard-tools recommends a kernel image.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts unbound's and coturn's system services on install; our tests run their own.
for unit in unbound coturn; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done
