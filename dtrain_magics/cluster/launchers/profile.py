"""``profile``: connect to an ipyparallel cluster someone started; never stop it."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ...errors import ClusterStartError
from .base import LaunchSpec, Layout


def where(spec: LaunchSpec) -> str:
    """``profile NAME, cluster id ID`` for messages."""
    text = f"profile {spec.get('profile') or 'default'}"
    if spec.get("cluster_id"):
        text += f", cluster id {spec.get('cluster_id')}"
    return text


class ProfileLauncher:
    """A running cluster, found by profile or cluster id (``ipcluster start --engines=mpi``)."""

    name: ClassVar[str] = "profile"
    owns_processes: ClassVar[bool] = False
    uses: ClassVar[tuple[str, ...]] = ()

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        raise TypeError("the profile launcher connects to a running cluster; it starts none.")

    def check(self, spec: LaunchSpec, layout: Layout | None = None) -> None:
        """Nothing to find before connecting: the connection says what is wrong."""

    def check_submission(self, spec: LaunchSpec, layout: Layout) -> None:
        """Nothing is submitted."""

    def connect(self, spec: LaunchSpec, timeout: float) -> Any:
        from ..client import NotifyingClient

        try:
            client = NotifyingClient(
                profile=spec.get("profile") or None,
                cluster_id=spec.get("cluster_id") or None,
                timeout=min(timeout, 30),
            )
            client.wait_for_engines(1, timeout=timeout)
            # engines started under MPI know how many they are: wait for all of them
            size = client[client.ids[0]].apply_sync(_mpi_size)
            if size > 1:
                client.wait_for_engines(size, timeout=timeout)
            else:
                wait_until_steady(client, settle=2.0, timeout=timeout)
        except Exception as e:
            raise ClusterStartError(
                f"could not connect to a running ipyparallel cluster ({where(spec)}): {e}; "
                "start it with ipcluster or pick another profile or cluster id."
            ) from None
        return client

    def pending(self, engine_set: Any) -> str | None:
        return None

    def job_ended(self, engine_set: Any) -> bool:
        return False


def _mpi_size() -> int:
    """Runs on an engine: the size of its MPI job."""
    from mpi4py import MPI

    return int(MPI.COMM_WORLD.Get_size())


def wait_until_steady(client: Any, settle: float, timeout: float) -> None:
    """Wait until no engine has registered for ``settle`` seconds (a cluster we did not start
    tells us nothing about how many engines are on their way)."""
    deadline = time.monotonic() + timeout
    count, since = len(client.ids), time.monotonic()
    while time.monotonic() - since < settle and time.monotonic() < deadline:
        time.sleep(0.1)
        if len(client.ids) != count:
            count, since = len(client.ids), time.monotonic()
