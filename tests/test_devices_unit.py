"""The ranks' device chosen from their surveys, the torch backend's address across hosts, and
what the installer and doctor say of GPU builds: pure logic (the GPU runs are in test_gpu.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dtrain_magics.cluster.devices import choose_device
from dtrain_magics.errors import BadOptions
from dtrain_magics.install.cache import arch_tag, cache_key, without_arch_tag
from dtrain_magics.install.doctor import assess
from dtrain_magics.install.facts import EnvFacts, HorovodFacts, MpiInfo
from dtrain_magics.rank.backends import _host_address, interface_towards
from dtrain_magics.rank.telemetry import Telemetry


def survey(rank: int, host: str = "n1", gpus: int = 2, gpu: str | None = None, **kw: Any) -> Any:
    host_size = kw.pop("host_size", 2)
    found = {"rank": rank, "host": host, "host_size": host_size, "gpus": gpus, "visible": None}
    found.update(gpu=gpu if gpu is not None else (f"GPU-{rank % max(gpus, 1)}" if gpus else None))
    return {"reason": None, **found, **kw}


def test_a_gpu_each_gives_cuda() -> None:
    assert choose_device("auto", [survey(0), survey(1)]) == ("cuda", None)
    assert choose_device("cuda", [survey(0), survey(1)]) == ("cuda", None)


def test_cpu_asked_or_no_gpu_anywhere_gives_cpu_without_a_note() -> None:
    assert choose_device("cpu", [survey(0), survey(1)]) == ("cpu", None)
    assert choose_device("auto", [survey(0, gpus=0), survey(1, gpus=0)]) == ("cpu", None)


def test_more_ranks_than_gpus_on_a_host() -> None:
    crowded = [survey(r, gpus=1, host_size=2) for r in range(2)]
    assert choose_device("auto", crowded) == ("cpu", "auto: 1 GPU for 2 ranks on n1")
    with pytest.raises(BadOptions, match=r"ranks 0 and 1 on one GPU of n1 \(1 for 2 ranks"):
        choose_device("cuda", crowded)


def test_ranks_that_each_see_their_own_gpu_as_gpu_0_do_not_share() -> None:
    # a site that sets CUDA_VISIBLE_DEVICES per rank: each rank's GPU 0 is another GPU
    own = [survey(r, gpus=1, gpu=f"GPU-uuid-{r}", visible=str(r)) for r in range(2)]
    assert choose_device("cuda", own) == ("cuda", None)


def test_the_same_gpu_index_on_two_hosts_is_not_shared() -> None:
    two_hosts = [survey(0, host="a", gpus=1, host_size=1), survey(1, host="b", gpus=1, host_size=1)]
    assert choose_device("cuda", two_hosts) == ("cuda", None)


def test_a_rank_without_a_gpu() -> None:
    mixed = [survey(0), survey(1, gpus=0, reason="Found no NVIDIA driver on your system.")]
    assert choose_device("auto", mixed) == ("cpu", "auto: rank 1 sees no GPU")
    with pytest.raises(BadOptions) as caught:
        choose_device("cuda", mixed)
    assert str(caught.value) == (
        "--device cuda was requested but rank 1 sees no CUDA GPU: Found no NVIDIA driver on your "
        "system; use --device auto or --device cpu."
    )


def test_a_host_name_on_loopback_gives_the_full_names_address(monkeypatch: Any) -> None:
    """Debian and Ubuntu map the host name to 127.0.1.1 in /etc/hosts."""
    answers = {"node1": "127.0.1.1", "node1.example.org": "10.1.2.3"}

    def getaddrinfo(name: str, *args: Any) -> list[Any]:
        if name not in answers:
            raise socket.gaierror(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[name], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "getfqdn", lambda: "node1.example.org")
    assert _host_address("node1") == "10.1.2.3"
    answers["node1.example.org"] = "127.0.1.1"
    assert _host_address("node1") is None


def test_the_interface_towards_loopback_is_lo() -> None:
    assert interface_towards("127.0.0.1") == "lo"


def test_a_build_for_some_gpus_has_its_own_cache_key() -> None:
    assert arch_tag("") == ""
    assert arch_tag("90, 80") == "-sm80_90"
    assert arch_tag("90a") == "-sm90a"
    key = cache_key("0.28.1", "2.9.0", "cu128" + arch_tag("90"), "312", "ompi5.0.11")
    assert key == "horovod-0.28.1-torch2.9.0_cu128-sm90-py312-ompi5.0.11"
    assert without_arch_tag(key) == "horovod-0.28.1-torch2.9.0_cu128-py312-ompi5.0.11"


def _env(**kw: Any) -> EnvFacts:
    base = {"python": "3.12", "executable": "py", "python_tag": "312", "prefix": "/v"}
    return EnvFacts(site_packages="/v/lib", torch="2.9.0", torch_cuda="12.8", **base, **kw)


MPI = MpiInfo("Open MPI", "5.0.11", "/v/bin/mpiexec", "/v/bin/mpicxx")
HOROVOD = HorovodFacts("0.28.1", True, False, True, True, None, "/v/horovod")


def test_doctor_says_why_a_cuda_torch_sees_no_gpu() -> None:
    old = "The NVIDIA driver on your system is too old (found version 12020)."
    gpus = assess(_env(gpu_reason=old), MPI, HOROVOD)[-1]
    assert gpus.value == f"none seen (torch: {old})"
    assert gpus.problem is not None and "update the driver" in gpus.problem
    assert not gpus.blocking
    none = "Found no NVIDIA driver on your system."
    plain = assess(_env(gpu_reason=none), MPI, HOROVOD)[-1]
    assert (plain.value, plain.problem) == (f"none seen (torch: {none})", None)


def test_a_gpu_scalar_is_read_when_the_buffer_is_sent_not_when_logged() -> None:
    import torch

    class OnGpu(torch.Tensor):  # what a CUDA tensor says of itself, on a machine without one
        is_cuda = True

    sent: list[dict[str, Any]] = []
    telemetry = Telemetry(sent.append)
    telemetry._last = float("inf")  # no send on the way
    loss = torch.tensor(0.5).as_subclass(OnGpu)
    telemetry.log(loss=loss)
    assert isinstance(telemetry._points[0][2], torch.Tensor)  # not read yet: no wait
    loss += 1  # the step goes on with its tensor: the logged copy keeps 0.5
    with pytest.raises(ValueError, match=r"dtrain\.log: loss has 2 elements; log a scalar"):
        telemetry.log(loss=torch.ones(2).as_subclass(OnGpu))
    telemetry.flush()
    (payload,) = sent[0].values()
    assert [p[:3] for p in payload["points"]] == [(0, "loss", 0.5)]


def test_only_values_holding_gpu_tensors_are_saved_by_torch() -> None:
    import torch

    from dtrain_magics.run.transfer import _holds_gpu_tensors

    class OnGpu(torch.Tensor):  # what a CUDA tensor says of itself, on a machine without one
        is_cuda = True

    assert _holds_gpu_tensors({"w": [1, torch.ones(2).as_subclass(OnGpu)]})
    assert not _holds_gpu_tensors({"w": torch.ones(2), "n": [1, 2]})
    assert not _holds_gpu_tensors(lambda x: x)  # pickle cannot walk it: ipyparallel sends it


def test_gpu_scalars_are_read_in_one_copy() -> None:
    import torch

    from dtrain_magics.rank.telemetry import _read_gpu_scalars

    points = [
        (0, "loss", torch.tensor(0.5), 1.0),
        (0, "lr", 0.1, 1.0),
        (1, "loss", torch.tensor([2]), 2.0),
    ]
    assert _read_gpu_scalars(points) == [
        (0, "loss", 0.5, 1.0),
        (0, "lr", 0.1, 1.0),
        (1, "loss", 2.0, 2.0),
    ]
