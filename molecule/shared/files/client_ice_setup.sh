#!/bin/bash
# Runs inside the client container (lab_up.py --ice-client), after /opt/ice was filled from the
# controller with `podman cp`: wheels/ (the lab's wheels, aioice among them) and tests/, the
# repository's independent ICE client (tests/iceclient.py and the two modules it imports).
# Makes /opt/ice/venv: aioice, plus the gateway package without its dependencies, only because
# tests/netlab.py imports gateway_pkg.netconst (constants). The agent is then
#   cd /opt/ice && PYTHONPATH=/opt/ice venv/bin/python -m tests.iceclient --wg-port N ...
# and labcheck.py --ice drives it over `podman exec -i` (JSON lines, see tests/iceclient.py).
set -euo pipefail
cd /opt/ice
if [ ! -x venv/bin/python ] || ! PYTHONPATH=/opt/ice venv/bin/python -c 'import tests.iceclient' 2>/dev/null; then
  python3 -m venv venv
  venv/bin/pip install -q --no-index --find-links wheels aioice
  venv/bin/pip install -q --no-index --find-links wheels --no-deps firezone-gateway-py
fi
PYTHONPATH=/opt/ice venv/bin/python -c 'import aioice, tests.iceclient; print("ice client: aioice", aioice.__version__, "+ tests/iceclient.py in /opt/ice")'
