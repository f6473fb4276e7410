#!/usr/bin/env bash
# Build a minimal Debian image that runs systemd as PID 1, for converging the roles into
# throwaway podman containers: Debian 12 (bookworm, the default) or 13 (trixie). No registry is
# needed: debootstrap + podman import. The image is tagged with a hash of its recipe and rebuilt
# only when the recipe changes.
#
# Usage: tools/build_image.sh [RELEASE]     (12 or 13; default 12)
# Prints the image reference (localhost/fz-debian<RELEASE>-systemd:<recipe hash>) on stdout;
# also tags it :latest. Needs root, debootstrap and podman (installed by scripts/e2e.sh), and
# a debootstrap that knows the suite (Debian 12's does). Uses tools/containers.conf.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
release=${1:-12}
case "$release" in
  12) suite=bookworm ;;
  13) suite=trixie ;;
  *) echo "build_image: release $release is not one of 12, 13" >&2; exit 2 ;;
esac
name=localhost/fz-debian$release-systemd
export CONTAINERS_CONF=${CONTAINERS_CONF:-"$root/tools/containers.conf"}

packages=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,sudo,iputils-ping,procps,libcap2-bin,ca-certificates

# The Debian mirror this machine already uses (deb822 .sources or one-line sources.list): the
# one of its main archive (not -security), which serves every release.
mirror() {
  local uri
  uri=$(awk '
      /^URIs:/ { uris = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) { print uris; exit } }
      /^$/ { uris = "" }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $3 !~ /-security$/ { print $2; exit }' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "build_image: no Debian apt source found on this machine" >&2; exit 1; }
  echo "$uri"
}
url=$(mirror)

# The recipe: this script, the package list, the suite and the mirror.
hash=$( { cat "$0"; echo "$suite $packages $url"; } | sha256sum | cut -c1-12)
ref="$name:$hash"
if podman image exists "$ref"; then
  podman tag "$ref" "$name:latest"
  echo "$ref"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build_image: debootstrap $suite from $url" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$url" >&2

# Trim what a container does not need, and give each container its own machine-id.
# shellcheck disable=SC2016  # expanded by the shell inside the chroot
chroot "$work/rootfs" /bin/sh -ec '
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_reap.service \
              getty@tty1.service systemd-pstore.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
  done
  : > /etc/machine-id
  # dbus keeps its own copy, which systemd copies into an empty /etc/machine-id at boot: every
  # container would get the same ID. A link, as Debian makes it on an installed system.
  ln -sf /etc/machine-id /var/lib/dbus/machine-id
' >&2
# Point apt at the same mirror inside the image.
printf 'deb %s %s main\n' "$url" "$suite" > "$work/rootfs/etc/apt/sources.list"

tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/rootfs" -c . \
  | podman import --change 'CMD ["/lib/systemd/systemd"]' --change 'STOPSIGNAL SIGRTMIN+3' - "$ref" >&2
podman tag "$ref" "$name:latest"
echo "$ref"
