#!/bin/bash
# Runs inside the lab container (after /opt/lab was filled from the controller with `podman cp`:
# wheels/, lab_http.py, gateway-tokens, admin-token, admin-header). Sets up, as systemd units:
#   lab-addresses  resource addresses NET.11-13 on eth0
#   lab-unbound    unbound on NET.10:53 serving lab.test. (short TTLs), forwarding the rest to
#                  the podman network's resolver; control socket /run/lab-unbound.ctl
#   lab-http       HTTP resources (lab_http.py): NET.11:80 allowed, NET.11:8000 filtered,
#                  NET.12:80 old-address, NET.13:80 new-address
#   lab-portal     firezone-dev-portal on NET.10:8081
# Usage: E2E_NET=10.89.61 lab_setup.sh
set -euo pipefail
net=${E2E_NET:?}
cd /opt/lab
chmod 600 gateway-tokens admin-token admin-header

if [ ! -x /opt/lab/venv/bin/firezone-dev-portal ]; then
  python3 -m venv /opt/lab/venv
  /opt/lab/venv/bin/pip install -q --no-index --find-links /opt/lab/wheels 'firezone-gateway-py[devportal]'
fi

upstream=$(awk -v me="$net.10" '$1 == "nameserver" && $2 != me { print "    forward-addr: " $2 }' /etc/resolv.conf)
cat > /opt/lab/unbound.conf <<CONF
server:
    interface: $net.10
    port: 53
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "/opt/lab"
    pidfile: "/run/lab-unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    do-ip6: no
    access-control: 0.0.0.0/0 allow
    module-config: "iterator"
    domain-insecure: "."
    local-zone: "lab.test." static
    local-data: "lab.test. 10 IN SOA ns.lab.test. admin.lab.test. 1 3600 600 86400 2"
    local-data: "ttl.lab.test. 8 IN A $net.12"
    local-data: "legacy.lab.test. 1 IN A $net.12"
    local-data: "portal.lab.test. 60 IN A $net.10"
remote-control:
    control-enable: yes
    control-interface: /run/lab-unbound.ctl
forward-zone:
    name: "."
$upstream
CONF

cat > /opt/lab/http.json <<JSON
[{"address": "$net.11", "port": 80, "name": "allowed"},
 {"address": "$net.11", "port": 8000, "name": "filtered"},
 {"address": "$net.12", "port": 80, "name": "old-address"},
 {"address": "$net.13", "port": 80, "name": "new-address"}]
JSON

unit() { cat > "/etc/systemd/system/$1"; }
unit lab-addresses.service <<UNIT
[Unit]
Description=Resource addresses of the e2e lab
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace $net.11/32 dev eth0
ExecStart=/sbin/ip addr replace $net.12/32 dev eth0
ExecStart=/sbin/ip addr replace $net.13/32 dev eth0
[Install]
WantedBy=multi-user.target
UNIT
unit lab-unbound.service <<UNIT
[Unit]
Description=unbound of the e2e lab (lab.test.)
[Service]
ExecStart=/usr/sbin/unbound -d -c /opt/lab/unbound.conf
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
unit lab-http.service <<UNIT
[Unit]
Description=HTTP resources of the e2e lab
Requires=lab-addresses.service
After=lab-addresses.service
[Service]
ExecStart=/usr/bin/python3 /opt/lab/lab_http.py /opt/lab/http.json
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
unit lab-portal.service <<UNIT
[Unit]
Description=Firezone dev portal of the e2e lab
[Service]
ExecStart=/opt/lab/venv/bin/firezone-dev-portal --listen $net.10:8081 --gateway-token-file /opt/lab/gateway-tokens --admin-token-file /opt/lab/admin-token
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --quiet lab-addresses.service lab-unbound.service lab-http.service lab-portal.service
systemctl restart lab-addresses.service lab-unbound.service lab-http.service lab-portal.service

for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://$net.10:8081/healthz" 2>/dev/null \
    && unbound-control -c /opt/lab/unbound.conf status >/dev/null 2>&1 \
    && curl -fsS -o /dev/null "http://$net.11/" 2>/dev/null && break
  sleep 0.2
done
curl -fsS "http://$net.10:8081/healthz"; echo
unbound-control -c /opt/lab/unbound.conf status | head -n 1
echo "lab ready on $net.10"
