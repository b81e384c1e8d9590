#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (Playwright drives it; it downloads no browser).
# Idempotent: returns at once when chromium is already installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "[browser] ERROR: installing chromium needs root (apt-get install chromium)." >&2; exit 1; }
  SUDO=sudo
fi
echo "[browser] installing Debian's chromium for the browser tests"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
} || { echo "[browser] ERROR: apt-get could not install chromium." >&2; exit 1; }
command -v chromium >/dev/null || { echo "[browser] ERROR: chromium is not on PATH after installing it." >&2; exit 1; }
