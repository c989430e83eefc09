#!/usr/bin/env bash
# The Debian packages the tests drive for real (cryptsetup on a loop device, sshd on loopback,
# nftables in a network namespace, systemd-analyze, dpkg-deb, a deb fetched with apt-get download,
# the review page in chromium).
# `make test` runs this first: as root it installs what is missing (nothing when all is present);
# otherwise it says in one line what is missing, and the tests that need it skip with that reason.
set -euo pipefail

# command -> package that provides it
declare -A NEED=(
  [cryptsetup]=cryptsetup-bin
  [sshd]=openssh-server
  [ssh]=openssh-client
  [nft]=nftables
  [ip]=iproute2
  [losetup]=util-linux
  [unshare]=util-linux
  [systemd-analyze]=systemd
  [dpkg-scanpackages]=dpkg-dev
  [mkfs.ext4]=e2fsprogs
  [sshpass]=sshpass
  [chromium]=chromium  # the review page's browser tests (Playwright drives it; no browser download)
)

PATH="$PATH:/usr/sbin:/sbin"
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# The deb-fetch tests ask apt for a candidate version: they need a package index.
index_ok=1
if command -v apt-cache >/dev/null 2>&1; then
  policy="$(apt-cache policy sensible-utils 2>/dev/null || true)"
  [[ "$policy" =~ Candidate:\ [0-9] ]] || index_ok=0
fi

if [ ${#missing[@]} -eq 0 ] && [ $index_ok -eq 1 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "make test: not root or no apt-get, so these Debian packages stay missing and the tests that need them skip: ${missing[*]:-none}$([ $index_ok -eq 0 ] && echo ' (and no apt package index: run apt-get update)')" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "make test: installing the Debian packages the tests use: ${missing[*]:-none (package index only)}" >&2
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
