#!/usr/bin/env bash
# Score our unit (rendered from the role's template with its defaults) and upstream's 1.4.17
# unit with `systemd-analyze security --offline=yes` (lower is better; 0 = fully sandboxed,
# 10 = unprotected). Prints both overall exposure values.
# Usage: tools/score_unit.sh [--verbose]
# Note: the score reflects the unit's directives. Inside containers some namespace
# directives are not enforced, so a container run does not prove them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$root/tools/render_unit.sh" "$work/ours" >/dev/null
mkdir -p "$work/upstream"
cp "$root/tools/upstream-unit-1.4.17.service" "$work/upstream/firezone-gateway.service"

score() {
  # The last line reads: → Overall exposure level for firezone-gateway.service: 1.2 OK 🙂
  systemd-analyze security --offline=yes --no-pager "$1" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p'
}

if [ "${1:-}" = "--verbose" ]; then
  for unit in "$work/ours/firezone-gateway.service" "$work/upstream/firezone-gateway.service"; do
    echo "== $unit"
    systemd-analyze security --offline=yes --no-pager "$unit" 2>/dev/null | grep -v '^  ✓' || true
  done
fi

printf '%-44s %s\n' "unit" "exposure (systemd $(systemd-analyze --version | awk 'NR==1{print $2}'))"
printf '%-44s %s\n' "firezone-gateway-py (roles/firezone_gateway)" "$(score "$work/ours/firezone-gateway.service")"
printf '%-44s %s\n' "upstream 1.4.17 install-script unit" "$(score "$work/upstream/firezone-gateway.service")"
