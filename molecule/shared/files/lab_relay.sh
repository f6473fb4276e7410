#!/bin/bash
# Runs inside the lab container after lab_setup.sh (lab_up.py --relay): a TURN relay for the
# gateways and the ICE client, and the dev portal handing it out.
#   lab-turn     coturn (turnserver) on NET.10:3478, relayed addresses on NET.10 as well,
#                `use-auth-secret` with a random static secret in /opt/lab/turn-secret
#   lab-portal   a drop-in adding `--relay NET.10:3478 --turn-secret-file /opt/lab/turn-secret`
#                to lab_setup.sh's command, so gateways get the relay in `init`
# Debian's own coturn.service is masked in the image (tools/build_lab_image.sh).
# Usage: E2E_NET=10.89.70 lab_relay.sh
set -euo pipefail
net=${E2E_NET:?}
cd /opt/lab

if [ ! -s turn-secret ]; then
  (umask 077 && head -c 24 /dev/urandom | base64 > turn-secret)
fi
mkdir -p /opt/lab/turn

# -n: no configuration file, so the secret is on the command line (visible in `ps` inside this
# throwaway lab; docs/devportal.md says how to keep it in a file instead). $$ is systemd's $.
cat > /etc/systemd/system/lab-turn.service <<UNIT
[Unit]
Description=coturn of the e2e lab (TURN relay on $net.10:3478)
[Service]
ExecStart=/bin/sh -c 'exec /usr/bin/turnserver -n --use-auth-secret --static-auth-secret="\$\$(cat /opt/lab/turn-secret)" --realm=firezone --listening-ip=$net.10 --listening-port=3478 --relay-ip=$net.10 --no-cli --no-tls --no-dtls --fingerprint --db=/opt/lab/turn/turndb --pidfile=/opt/lab/turn/turnserver.pid --log-file=stdout --simple-log'
Restart=always
[Install]
WantedBy=multi-user.target
UNIT

# The portal's command line as lab_setup.sh wrote it, plus the relay.
portal=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/lab-portal.service)
case "$portal" in *firezone-dev-portal*) ;; *) echo "lab_relay: no dev portal command in lab-portal.service" >&2; exit 1;; esac
mkdir -p /etc/systemd/system/lab-portal.service.d
cat > /etc/systemd/system/lab-portal.service.d/relay.conf <<UNIT
[Service]
ExecStart=
ExecStart=$portal --relay $net.10:3478 --turn-secret-file /opt/lab/turn-secret
UNIT

systemctl daemon-reload
systemctl enable --quiet lab-turn.service
systemctl restart lab-turn.service lab-portal.service

# Ready when coturn answers a STUN Binding request and the portal lists the relay.
stun_ok() {
  python3 - "$net.10" <<'PY'
import os, socket, struct, sys
tid = os.urandom(12)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
s.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid, (sys.argv[1], 3478))
data = s.recv(2048)
sys.exit(0 if data[:2] == b"\x01\x01" and data[8:20] == tid else 1)
PY
}
relay_listed() {
  curl -fsS -H @/opt/lab/admin-header "http://$net.10:8081/v1/relays" 2>/dev/null | grep -q "$net.10:3478"
}
ready=""
for _ in $(seq 100); do
  if stun_ok 2>/dev/null && relay_listed; then ready=yes; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "lab_relay: coturn or the portal's relay is not up" >&2
  journalctl -u lab-turn -u lab-portal -n 30 --no-pager >&2 || true
  exit 1
fi
echo "relay: coturn $(turnserver --version 2>/dev/null | tail -n 1) on $net.10:3478 (STUN answers); the dev portal hands it out"
