"""Communication backends a rank can run: each one initialises, resets and shuts down.

A backend is one small class registered in ``BACKENDS``; adding one means adding a class here.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, ClassVar, Protocol

from .devices import resolve_device


class Backend(Protocol):
    """What the rank-side setup needs of a backend."""

    name: ClassVar[str]

    def init(self) -> tuple[int, int, dict[str, Any]]:
        """Initialise; return (rank, size, names to bind in the rank's namespace)."""

    def reset(self) -> None:
        """Bring the backend back to a clean state after an aborted collective."""

    def shutdown(self) -> None:
        """Tear the backend down."""


class HorovodBackend:
    """``horovod.torch`` over MPI; binds ``hvd``."""

    name: ClassVar[str] = "horovod"

    def init(self) -> tuple[int, int, dict[str, Any]]:
        import horovod.torch as hvd

        from . import collectives, interrupts

        interrupts.install()
        collectives.install_horovod()
        if not hvd.is_initialized():
            hvd.init()
        return hvd.rank(), hvd.size(), {"hvd": hvd}

    def reset(self) -> None:
        import horovod.torch as hvd

        hvd.shutdown()
        hvd.init()

    def shutdown(self) -> None:
        import horovod.torch as hvd

        hvd.shutdown()


class TorchBackend:
    """``torch.distributed``: gloo on CPU, nccl on CUDA, rendezvous over MPI; binds ``dist``."""

    name: ClassVar[str] = "torch"
    device: str = "cpu"

    def init(self) -> tuple[int, int, dict[str, Any]]:
        import torch.distributed as dist
        from mpi4py import MPI

        from . import collectives

        collectives.install_torch()
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        if not dist.is_initialized():
            self._init_process_group(comm, rank, size)
        return rank, size, {"dist": dist}

    def _init_process_group(self, comm: Any, rank: int, size: int) -> None:
        import torch.distributed as dist

        hosts = comm.allgather(socket.gethostname())
        one_host = len(set(hosts)) == 1
        if one_host:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        address = None
        if rank == 0:
            host = "127.0.0.1" if one_host else socket.gethostbyname(socket.gethostname())
            with socket.socket() as s:
                s.bind((host, 0))
                address = f"tcp://{host}:{s.getsockname()[1]}"
        address = comm.bcast(address, root=0)
        dist.init_process_group(
            "nccl" if self.device == "cuda" else "gloo",
            init_method=address,
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(minutes=10),
        )

    def reset(self) -> None:
        self.shutdown()
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        self._init_process_group(comm, comm.Get_rank(), comm.Get_size())

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


BACKENDS: dict[str, type[Backend]] = {"horovod": HorovodBackend, "torch": TorchBackend}


def make_backend(name: str, device: Any) -> Backend:
    """Instantiate the backend called ``name`` for ``device`` (a torch.device)."""
    backend = BACKENDS[name]()
    if isinstance(backend, TorchBackend):
        backend.device = device.type
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "HorovodBackend",
    "TorchBackend",
    "make_backend",
    "resolve_device",
]
