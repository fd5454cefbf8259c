#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers into DEST the way the build does (OrtHeaders.cmake: Debian's
# libonnxruntime-dev downloaded by CMake and checked against a pinned SHA-256; no apt, no dpkg).
# Usage: fetch_ort_headers.sh DEST
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: fetch_ort_headers.sh DEST" >&2; exit 2; }
exec cmake -DDEST="$1" -P "$(dirname "$0")/OrtHeaders.cmake"
