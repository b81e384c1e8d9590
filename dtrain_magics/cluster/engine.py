"""The engine our clusters run: ipyparallel's own, with the training stack imported first.

Engines start at the same time as the controller and find its connection file when it appears;
importing torch and Horovod (seconds on a small machine) happens meanwhile, instead of in the
first cell's initialisation of the ranks.

ipyparallel's MPI launchers start engines with ``--mpi``, which initialises MPI at once to
take the MPI rank as the engine id. Where ``mpiexec`` put the rank into the environment, the
engine takes its id from there and leaves MPI down until Horovod or a helper needs it
(``dtrain_magics.rank.world``).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from collections.abc import MutableMapping

PRELOAD = ("torch", "horovod.torch")
log = logging.getLogger(__name__)


def command() -> list[str]:
    """The command that starts this engine (``EngineLauncher.engine_cmd``)."""
    return [sys.executable, "-m", "dtrain_magics.cluster.engine"]


def preload() -> None:
    """Import the training stack; a missing part is reported when the ranks initialise."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            log.debug("could not import %s before the engine started", name, exc_info=True)


def share_cores(env: MutableMapping[str, str]) -> None:
    """Give this rank its share of its own host's cores (``OMP_NUM_THREADS``, MPI's yielding
    when every core has a rank) where the launcher left them out: ranks on other hosts than
    the notebook's. Settings already in ``env`` (the launcher's, the user's) are kept."""
    from ..install.facts import cores_here
    from ..rank.world import from_environment
    from .launchers.base import sharing_environment

    here = from_environment(env)
    if here is None:
        return
    for name, value in sharing_environment(cores_here(), here.host_size).items():
        env.setdefault(name, value)


def empty_stdin() -> None:
    """Give the engine an empty standard input: a rank that reads it would otherwise wait for
    ever where the MPI hands the ranks an open one, and another file takes descriptor 0 where it
    closed it (MPICH's Hydra, for every rank but 0)."""
    devnull = os.open(os.devnull, os.O_RDONLY)  # 0 itself where it was closed
    if devnull != 0:
        os.dup2(devnull, 0)
        os.close(devnull)
    if sys.stdin is None:  # Python found no standard input at start-up
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own, for its life)


def close_inherited_listeners() -> None:
    """Close the listening sockets this process inherited: MPICH's ``mpiexec`` (Hydra) leaves
    its control port, bound to every interface, open in every rank it starts. Nothing of the
    engine's listens yet, and nothing in it accepts on those."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux
        return
    for fd in fds:
        if fd <= 2:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket, or already closed (the listing's own)
            continue
        try:
            listening = sock.family in (socket.AF_INET, socket.AF_INET6) and bool(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            )
        except OSError:
            listening = False
        sock.detach()
        if listening:
            os.close(fd)


def arguments(argv: list[str]) -> list[str]:
    """ipengine's arguments: ``--mpi`` replaced by the rank from the environment, if there."""
    from ..rank.world import from_environment

    here = from_environment()
    if here is None or "--mpi" not in argv:
        return argv
    return [a for a in argv if a != "--mpi"] + [f"--IPEngine.id={here.rank}"]


def main() -> None:
    """Close inherited listeners and standard input, share the cores, import the training
    stack (which reads the thread count), then run ipyparallel's engine."""
    close_inherited_listeners()
    empty_stdin()
    share_cores(os.environ)
    preload()
    from ipyparallel.engine.app import main as ipengine

    ipengine(arguments(sys.argv[1:]))


if __name__ == "__main__":
    main()
