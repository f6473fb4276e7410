#!/usr/bin/env bash
# Build the lab/client image of the Molecule scenarios and the container demo: the base
# Debian 12 systemd image (tools/build_image.sh) plus unbound, coturn, wireguard-go,
# wireguard-tools, curl, iperf3 and python3-venv, installed with apt inside a container and
# `podman commit`ed (there is no registry to pull from and no Dockerfile build context is needed).
# Gateway hosts do NOT use this image: they start from the plain base image, so the role has
# to install everything a real host needs.
#
# The image is tagged with a hash of its recipe (this script, the package list and the base
# image's ID) and rebuilt only when that changes.
#
# Usage: tools/build_lab_image.sh [NAME]        (default NAME: localhost/fz-debian12-lab)
# Prints the image reference (NAME:<recipe hash>) on stdout; also tags NAME:latest.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-localhost/fz-debian12-lab}
export CONTAINERS_CONF=${CONTAINERS_CONF:-"$root/tools/containers.conf"}

packages="unbound coturn wireguard-go wireguard-tools curl iperf3 python3-venv bind9-dnsutils iptables"

base=$("$root/tools/build_image.sh")
base_id=$(podman image inspect --format '{{.Id}}' "$base")

hash=$( { cat "$0"; echo "$packages $base_id"; } | sha256sum | cut -c1-12)
ref="$name:$hash"
if podman image exists "$ref"; then
  podman tag "$ref" "$name:latest"
  echo "$ref"
  exit 0
fi

builder="fz-lab-image-build-$$"
trap 'podman rm -f "$builder" >/dev/null 2>&1 || true' EXIT
echo "build_lab_image: installing $packages into $base" >&2
# --no-install-recommends: wireguard-tools recommends a kernel image. Debian starts unbound's
# own service on install, and coturn's is enabled for the next boot; the lab runs its own
# instances (molecule/shared/files/lab_setup.sh, lab_relay.sh), so mask both.
podman run --name "$builder" "$base" /bin/sh -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $packages
  systemctl mask unbound.service unbound-resolvconf.service coturn.service >/dev/null 2>&1 || true
  apt-get clean
  rm -rf /var/lib/apt/lists/*
" >&2
podman commit --quiet \
  --change 'CMD ["/lib/systemd/systemd"]' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$builder" "$ref" >/dev/null
podman tag "$ref" "$name:latest"
echo "$ref"
