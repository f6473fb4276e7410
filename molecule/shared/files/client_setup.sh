#!/bin/bash
# Runs inside the client container: WireGuard keys (generated here; only the public key and
# the PSK leave it, for the dev portal's flow) and wg0, a wireguard-go interface as a unit.
set -euo pipefail
umask 077
mkdir -p /etc/lab/wg
if [ ! -s /etc/lab/wg/private ]; then
  wg genkey > /etc/lab/wg/private
  wg pubkey < /etc/lab/wg/private > /etc/lab/wg/public
  wg genpsk > /etc/lab/wg/psk
fi
umask 022
cat > /etc/systemd/system/wg-client.service <<'UNIT'
[Unit]
Description=wireguard-go client interface wg0 of the e2e lab
[Service]
Environment=WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error
ExecStart=/usr/bin/wireguard-go wg0
ExecStartPost=/bin/sh -c 'for i in $(seq 100); do ip link show wg0 >/dev/null 2>&1 && break; sleep 0.1; done; ip addr replace 100.64.0.2/32 dev wg0; ip link set wg0 mtu 1280 up; wg set wg0 private-key /etc/lab/wg/private'
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --quiet wg-client.service
systemctl restart wg-client.service
wg show wg0 | head -n 3
