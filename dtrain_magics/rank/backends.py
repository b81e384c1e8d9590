"""Communication backends a rank can run: each one initialises, resets and shuts down.

A backend is one small class registered in ``BACKENDS``; adding one means adding a class here.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import inspect
import ipaddress
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .world import place


class Backend(Protocol):
    """What the rank-side setup needs of a backend."""

    name: ClassVar[str]
    kind: str  # the ranks' device kind: cpu or cuda

    def init(self) -> tuple[int, int, dict[str, Any]]:
        """Initialise; return (rank, size, names to bind in the rank's namespace)."""

    def reset(self, rendezvous: str | None) -> None:
        """Bring the backend back to a clean state after an aborted collective (``rendezvous``:
        a new address for the torch backend's, from ``offer_rendezvous``)."""

    def shutdown(self) -> None:
        """Tear the backend down."""


class HorovodBackend:
    """``horovod.torch`` over MPI; binds ``hvd``."""

    name: ClassVar[str] = "horovod"

    def __init__(self, kind: str = "cpu") -> None:
        self.kind = kind

    def init(self) -> tuple[int, int, dict[str, Any]]:
        import horovod.torch as hvd

        # MPI starts here, through mpi4py, and stays up: Horovod finalises an MPI that it
        # started itself when it shuts down (suspended when idle, reset after an abort), and
        # MPI cannot start twice in one process
        from mpi4py import MPI  # noqa: F401

        from . import collectives, interrupts

        interrupts.install()
        collectives.install_horovod()
        with collectives.horovod_lock:
            if not hvd.is_initialized():
                hvd.init()
        return hvd.rank(), hvd.size(), {"hvd": hvd}

    def reset(self, rendezvous: str | None = None) -> None:
        import horovod.torch as hvd

        from .collectives import horovod_lock

        with horovod_lock:  # after a shutdown another thread began (the wait it ended)
            hvd.shutdown()
            hvd.init()

    def shutdown(self) -> None:
        from .collectives import shutdown_horovod

        shutdown_horovod()


class TorchBackend:
    """``torch.distributed``: gloo on CPU, nccl on CUDA; binds ``dist``. MPI stays down, as
    under ``mpiexec -n N python train.py``: the rendezvous address comes from rank 0 through
    the notebook (``offer_rendezvous``)."""

    name: ClassVar[str] = "torch"

    def __init__(self, kind: str = "cpu", rendezvous: str | None = None) -> None:
        self.kind = kind
        self.rendezvous = rendezvous

    def init(self) -> tuple[int, int, dict[str, Any]]:
        import torch.distributed as dist

        from . import collectives

        collectives.install_torch()
        here = place()
        if not dist.is_initialized():
            self._init_process_group(here.rank, here.size)
        return here.rank, here.size, {"dist": dist}

    def _init_process_group(self, rank: int, size: int) -> None:
        import torch.distributed as dist

        if self.rendezvous is None:
            raise RuntimeError("the torch backend was given no rendezvous address")
        if self.rendezvous.startswith("file://"):  # every rank on this host
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        else:
            _pick_interface(self.rendezvous)
        dist.init_process_group(
            "nccl" if self.kind == "cuda" else "gloo",
            init_method=self.rendezvous,
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(minutes=10),
            **_bound_device(self.kind),
        )

    def reset(self, rendezvous: str | None = None) -> None:
        self.shutdown()
        self.rendezvous = rendezvous or self.rendezvous
        here = place()
        self._init_process_group(here.rank, here.size)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _bound_device(kind: str) -> dict[str, Any]:
    """``device_id`` for ``init_process_group`` on CUDA: the group is bound to this rank's GPU
    (chosen by ``resolve_device``), so NCCL forms its communicator at once, where a bad setup
    fails in the start-up rather than in the first collective, and ``barrier`` knows the GPU.
    Nothing on CPU, or for a torch older than ``device_id`` (2.3)."""
    import torch
    import torch.distributed as dist

    if kind != "cuda" or "device_id" not in inspect.signature(dist.init_process_group).parameters:
        return {}
    return {"device_id": torch.device("cuda", torch.cuda.current_device())}


def offer_rendezvous() -> dict[str, Any]:
    """Runs on every rank before the torch backend starts: this rank's host, and on rank 0 a
    new file in a private directory and a port free now, for ``rendezvous_address``."""
    here = place()
    host = socket.gethostname()
    offer: dict[str, Any] = {"rank": here.rank, "host": host}
    if here.rank == 0:
        # a new file each time: torch's FileStore must not meet a previous group's file
        folder = _rendezvous_dir()
        folder.mkdir(mode=0o700, exist_ok=True)  # again, should a cleaner of /tmp have struck
        offer["file"] = str(folder / f"store-{uuid.uuid4().hex}")
        if os.environ.get("MASTER_PORT"):
            offer["port"] = int(os.environ["MASTER_PORT"])
        else:
            with socket.socket() as s:
                s.bind(("", 0))
                offer["port"] = s.getsockname()[1]
        offer["ip"] = os.environ.get("MASTER_ADDR") or _host_address(host)
    return offer


def _host_address(host: str) -> str | None:
    """An address of ``host`` that other hosts can reach: its name's, unless that is a loopback
    address (Debian and Ubuntu map the host name to 127.0.1.1), else its full name's."""
    for name in (host, socket.getfqdn()):
        try:
            found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:  # a name only other hosts know: fine while every rank is here
            continue
        for *_, address in found:
            if not ipaddress.ip_address(address[0]).is_loopback:
                return str(address[0])
    return None


def _pick_interface(rendezvous: str) -> None:
    """Have gloo and NCCL talk over the interface that reaches rank 0's address, unless the user
    chose one: left alone, they take the address of the host's name, loopback on Debian-style
    hosts, and the ranks of other hosts cannot connect."""
    ip = rendezvous.removeprefix("tcp://").rsplit(":", 1)[0]
    interface = interface_towards(ip)
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


def interface_towards(ip: str) -> str | None:
    """The name of this host's network interface whose address reaches ``ip``, if found."""
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, 9))  # a datagram socket's connect sends nothing: it picks the route
        except OSError:
            return None
        local = str(s.getsockname()[0])
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return str(name)
    return None


@functools.cache
def _rendezvous_dir() -> Path:
    """This process's directory for rendezvous files, readable by its user only (mode 0700),
    removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="dtrain-rendezvous-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def rendezvous_address(offers: list[dict[str, Any]]) -> str:
    """Where ``torch.distributed``'s ranks meet, from every rank's ``offer_rendezvous``: a file
    on rank 0's host when all ranks share it (nothing listens on the network), else
    ``tcp://ip:port`` on rank 0 (``c10d``'s store listens on every interface there)."""
    first = next(o for o in offers if o["rank"] == 0)
    if len({o["host"] for o in offers}) == 1:
        return f"file://{first['file']}"
    if first["ip"] is None:
        raise RuntimeError(
            f"rank 0's host {first['host']!r} has no address other hosts can reach (its name "
            "resolves to none, or to a loopback address only); give the ranks its address with "
            "--env MASTER_ADDR=<address of rank 0's host>"
        )
    return f"tcp://{first['ip']}:{first['port']}"


BACKENDS: dict[str, type[Backend]] = {"horovod": HorovodBackend, "torch": TorchBackend}


def make_backend(name: str, device: Any, rendezvous: str | None = None) -> Backend:
    """Instantiate the backend called ``name`` for ``device`` (a torch.device); ``rendezvous``
    is the torch backend's (``rendezvous_address``)."""
    if name == TorchBackend.name:
        return TorchBackend(device.type, rendezvous)
    return BACKENDS[name](device.type)  # type: ignore[call-arg]


__all__ = [
    "BACKENDS",
    "Backend",
    "HorovodBackend",
    "TorchBackend",
    "make_backend",
    "offer_rendezvous",
    "rendezvous_address",
]
