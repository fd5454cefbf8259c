#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers (onnxruntime's pip wheels ship none) from Debian's
# libonnxruntime-dev package into DEST, without installing anything and without touching the
# system's apt sources: apt runs on a private state directory and dpkg -x only unpacks.
# Usage: fetch_ort_headers.sh DEST
set -euo pipefail
dest=$1
suite=${ONNXSPARSE_ORT_DEB_SUITE:-trixie}
if [ -f "$dest/onnxruntime_c_api.h" ]; then exit 0; fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "fetch_ort_headers: apt-get/dpkg not found; pass -DORT_INCLUDE_DIR=<dir with onnxruntime_c_api.h>" >&2; exit 1; }
mirror=${ONNXSPARSE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2; exit}')
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "fetch_ort_headers: no Debian mirror configured in /etc/apt; set ONNXSPARSE_DEBIAN_MIRROR" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources" "$work/lists/partial" "$work/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed="Signed-By: $keyring"
[ -f "$keyring" ] || signed="Trusted: yes"
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n%s\n' "$mirror" "$suite" "$signed" > "$work/sources/ort.sources"
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/sources"
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
      -o APT::Architecture=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=1)
apt-get "${opts[@]}" -qq update
(cd "$work" && apt-get "${opts[@]}" -qq download libonnxruntime-dev)
dpkg -x "$work"/libonnxruntime-dev_*.deb "$work/unpacked"
mkdir -p "$dest.partial"
cp -r "$work"/unpacked/usr/include/onnxruntime/. "$dest.partial/"
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "fetch_ort_headers: ONNX Runtime headers from libonnxruntime-dev ($suite) in $dest"
