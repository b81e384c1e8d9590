"""Without a cluster: a rank's place from what ``mpiexec`` tells it, the torch backend's
rendezvous address, and the engine's arguments."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from dtrain_magics.cluster import engine
from dtrain_magics.rank.backends import offer_rendezvous, rendezvous_address
from dtrain_magics.rank.world import Place, from_environment

OPEN_MPI = {
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}
HYDRA = {"PMI_RANK": "2", "PMI_SIZE": "8", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "4"}


@pytest.mark.parametrize(
    ("env", "place"),
    [
        (OPEN_MPI, Place(3, 4, 1, 2)),
        (HYDRA, Place(2, 8, 0, 4)),
        ({**HYDRA, **OPEN_MPI}, Place(3, 4, 1, 2)),
        ({"PMI_RANK": "2", "PMI_SIZE": "8"}, None),  # no local rank: ask MPI
        ({**OPEN_MPI, "OMPI_COMM_WORLD_RANK": ""}, None),
        ({}, None),
    ],
)
def test_place_from_the_environment(env: dict[str, str], place: Place | None) -> None:
    assert from_environment(env) == place


def test_rendezvous_is_a_file_when_every_rank_shares_a_host() -> None:
    offers = [
        {"rank": 1, "host": "a"},
        {"rank": 0, "host": "a", "ip": "10.0.0.5", "port": 4242, "file": "/tmp/d/store-1"},
    ]
    assert rendezvous_address(offers) == "file:///tmp/d/store-1"
    offers[0]["host"] = "b"
    assert rendezvous_address(offers) == "tcp://10.0.0.5:4242"
    offers[1]["ip"] = None
    with pytest.raises(RuntimeError, match=r"no address other hosts can reach.*--env MASTER_ADDR="):
        rendezvous_address(offers)


def test_rank_0_offers_a_new_file_in_a_private_folder_each_time(monkeypatch: Any) -> None:
    for name, value in {**OPEN_MPI, "OMPI_COMM_WORLD_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    first, second = Path(offer_rendezvous()["file"]), Path(offer_rendezvous()["file"])
    assert first != second and first.parent == second.parent
    assert not first.exists()  # torch's FileStore creates it
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    shutil.rmtree(first.parent)  # as a cleaner of /tmp might
    assert Path(offer_rendezvous()["file"]).parent.is_dir()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert "file" not in offer_rendezvous()


def test_the_engine_takes_its_id_from_the_environment(monkeypatch: Any) -> None:
    argv = ["--mpi", "--IPEngine.enable_nanny=False"]
    for name, value in OPEN_MPI.items():
        monkeypatch.setenv(name, value)
    assert engine.arguments(argv) == ["--IPEngine.enable_nanny=False", "--IPEngine.id=3"]
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK")
    assert engine.arguments(argv) == argv  # rank unknown: MPI says it, as ipyparallel does
