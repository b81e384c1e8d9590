"""The per-machine cache of built Horovod wheels, one directory per build flavour."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_cache_dir() -> Path:
    """``$DTRAIN_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/dtrain-magics``."""
    explicit = os.environ.get("DTRAIN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dtrain-magics"


def torch_flavour(torch_cuda: str | None, torch_hip: str | None = None) -> str:
    """``cpu``, ``cu130`` (from ``torch.version.cuda``, not the version's suffix) or ``rocm…``.

    PyPI's default CUDA torch reports a bare version ("2.13.0"), so the suffix cannot tell a CUDA
    build from a CPU one.
    """
    if torch_cuda:
        return "cu" + torch_cuda.replace(".", "")
    if torch_hip:
        return "rocm" + torch_hip.split("-")[0]
    return "cpu"


def arch_tag(cc_list: str | None = None) -> str:
    """``-sm80_90`` where ``HOROVOD_BUILD_CUDA_CC_LIST`` narrows the GPUs a CUDA build serves, else
    ``""``: a wheel for some GPUs must not be taken from a shared cache for others."""
    if cc_list is None:
        cc_list = os.environ.get("HOROVOD_BUILD_CUDA_CC_LIST", "")
    archs = sorted({x.strip() for x in cc_list.split(",") if x.strip()})
    return "-sm" + "_".join(archs) if archs else ""


def without_arch_tag(key: str) -> str:
    """``key`` as any GPUs' build would have it (``arch_tag`` removed)."""
    return re.sub(r"-sm[0-9a-z_]+(?=-py)", "", key)


def cache_key(
    horovod_version: str, torch_version: str, flavour: str, python_tag: str, mpi_key: str
) -> str:
    """``horovod-0.28.1-torch2.13.0_cpu-py311-ompi5.0.11``: what a built wheel is tied to."""
    base = torch_version.split("+")[0]
    return f"horovod-{horovod_version}-torch{base}_{flavour}-py{python_tag}-{mpi_key}"


def cached_wheel(cache_dir: Path, key: str) -> Path | None:
    """The cached wheel for ``key``, if one was built on this machine."""
    wheels = sorted((cache_dir / "wheels" / key).glob("horovod-*.whl"))
    return wheels[0] if wheels else None


def store_wheel(cache_dir: Path, key: str, wheel: Path) -> Path:
    """Copy ``wheel`` into the cache under ``key`` atomically (readers never see half a file)."""
    target_dir = cache_dir / "wheels" / key
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_dir, suffix=".part")
    os.close(fd)
    shutil.copyfile(wheel, tmp)
    target = target_dir / wheel.name
    os.replace(tmp, target)
    return target


def log_path(cache_dir: Path, key: str) -> Path:
    """Where the build log of ``key`` is written."""
    return cache_dir / "logs" / f"{key}.log"


@contextmanager
def locked(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold the lock of ``key``: two processes never build the same flavour at once."""
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
