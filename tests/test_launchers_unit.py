"""Without a cluster: which processes the cluster may stop, and the arguments and environment
the launchers give ``mpiexec`` for each MPI."""

from __future__ import annotations

import os
import socket

from dtrain_magics.cluster.ranks import RankEngine, local_pids


def test_only_engines_on_this_host_are_tracked_for_stopping() -> None:
    engines = [
        RankEngine(0, 10, os.getpid(), socket.gethostname()),
        RankEngine(1, 11, 1, "node-b.example.org"),  # pid 1 here is init: never ours to stop
        RankEngine(2, 12, 4242, "localhost"),
    ]
    assert local_pids(engines) == {os.getpid(), 4242}
