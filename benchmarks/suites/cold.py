"""Cold start: from nothing running to a first collective on 2 ranks (``--ranks``), each arm
from scratch.

- ``%%distributed``: a fresh kernel that has run ``%load_ext dtrain_magics`` in an earlier
  cell; the timed cell is the first ``%%distributed --nodes 2`` (``x = rank``, dashboard on):
  controller, ``mpiexec``, engines, Horovod initialised, the cell run. ``%dtrain stop`` and a
  kernel shutdown follow, so every run starts cold.
- ``mpiexec -n 2 python job.py`` and ``horovodrun --gloo -np 2 python job.py`` (Horovod's own
  launcher; its MPI mode fails with Open MPI 5): start Python, ``hvd.init()``, one allreduce.
- ipyparallel's own ``Cluster(engines="mpi", n=2)`` in a fresh kernel, with the same
  ``mpiexec`` and rank environment: ``start_and_connect_sync()`` until both engines registered,
  then the job's code on the engines (``hvd.init()``, one allreduce) through ``execute``.

Rounds run every arm once in a rotating order; ratios pair the rounds.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dtrain_magics.cluster.launchers import (
    Layout,
    find_mpiexec,
    mpiexec_options,
    rank_environment,
)

from ..context import Context
from ..report import Report, Row
from ..stats import summarize, summarize_ratio
from ..workloads import COLD_JOB

IPP_SETUP = """
import ipyparallel as ipp
from traitlets.config import Config
_c = Config()
_c.MPIEngineSetLauncher.mpi_cmd = [{mpiexec!r}]
_c.MPIEngineSetLauncher.mpi_args = {args!r}
_c.MPIEngineSetLauncher.environment = {env!r}
_cluster = ipp.Cluster(engines="mpi", n={ranks}, controller_ip="127.0.0.1", config=_c)
"""

MAGIC = "%%distributed (first cell)"
MPIEXEC = "mpiexec -n {n} python job.py"
HOROVODRUN = "horovodrun --gloo -np {n}"
IPP = "ipyparallel Cluster(engines='mpi') + job"


def run(ctx: Context, report: Report) -> None:
    rounds = 1 if ctx.quick else ctx.pairs
    job_text = f"DEVICE = {ctx.device!r}\n{COLD_JOB}"
    job = ctx.script("job.py", job_text)
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
    n = ctx.ranks
    mpiexec, hvdrun = MPIEXEC.format(n=n), HOROVODRUN.format(n=n)
    seconds: dict[str, list[float]] = {MAGIC: [], mpiexec: [], IPP: []}
    ipp_start: list[float] = []
    arms = {
        MAGIC: lambda: _magic(ctx),
        mpiexec: lambda: ctx.timed(ctx.mpiexec(n, sys.executable, str(job)), ctx.rank_env(n)),
        IPP: lambda: _ipyparallel(ctx, job_text, ipp_start),
    }
    if horovodrun:
        seconds[hvdrun] = []
        argv = [horovodrun, "--gloo", "-np", str(n), "-H", f"localhost:{n}", sys.executable]
        arms[hvdrun] = lambda: ctx.timed([*argv, str(job)], ctx.rank_env(n))
    names = list(arms)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(arms[name]())
    report.raw["cold"] = {"seconds": seconds, "ipyparallel_start_only": ipp_start}
    ours = summarize(seconds[MAGIC])
    for peer in names[1:]:
        ratio = summarize_ratio(seconds[MAGIC], seconds[peer])
        limit = 2.0 if peer == mpiexec else None
        report.rows.append(
            Row(
                "cold",
                "first cell incl. cluster start (s)",
                f"{ours['median']:.2f}",
                peer,
                f"{summarize(seconds[peer])['median']:.2f}",
                ratio,
                f"≤ {limit}×" if limit else "",
                ratio["median"] <= limit if limit else None,
            )
        )
    if not horovodrun:
        report.rows.append(Row("cold", "cold start (s)", "", hvdrun, "not installed"))
    report.notes.append(
        "Cold start: every arm from scratch in each round (fresh kernel or fresh processes); "
        f"ipyparallel's start alone, before the job's code: median "
        f"{summarize(ipp_start)['median']:.2f} s."
    )


def _magic(ctx: Context) -> float:
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        cell = kernel.run(f"{ctx.magic_line()}\nx = rank")
        kernel.run("%dtrain stop")
    return cell.kernel_s


def _ipyparallel(ctx: Context, job_text: str, start_only: list[float]) -> float:
    setup = IPP_SETUP.format(
        mpiexec=find_mpiexec(),
        args=mpiexec_options(),
        env=rank_environment(Layout(ctx.ranks, 1)),
        ranks=ctx.ranks,
    )
    with ctx.kernel() as kernel:
        kernel.run(setup)
        try:
            start = kernel.run("_rc = _cluster.start_and_connect_sync()")
            init = kernel.run(f"_ = _rc[:].execute({job_text!r}, block=True)")
        finally:
            kernel.run("_cluster.stop_cluster_sync()")
    start_only.append(start.kernel_s)
    return start.kernel_s + init.kernel_s
