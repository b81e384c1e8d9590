"""Warm trivial cell (``x = rank`` on 2 ranks): the magic against the peers, round by round.

Arms, each a real cell in a real kernel with a widget front end:

- ``%%distributed`` with the dashboard, and with ``--no-widget``;
- ``%%px`` and ``view.apply_sync`` on **the same engines**: the magic's cluster
  (``dtrain_magics._magics.cluster``) gives the view, ``view.activate()`` registers ``%%px``;
- nbdistributed's ``%%distributed`` after ``%dist_init -n 2``, in its own kernel (both packages
  name their magic ``%%distributed``), with its automatic mode turned off;
- accelerate's ``notebook_launcher(f, num_processes=2)``, which forks two fresh processes and
  initialises ``torch.distributed`` (gloo) in them on every call, in its own kernel.

With ``--ranks N`` (one GPU per rank with ``--device cuda``) every arm uses N ranks instead.

All kernels stay up side by side, so every round runs every arm once, in a shuffled order; a
peer's ratio uses the rounds' pairs. Peers that are not installed are reported as such; a peer
whose cell fails or gets no reply in ``PEER_TIMEOUT`` seconds (accelerate's launcher has been
seen to wait for ever on its workers) is left out of the rounds after, and the table says so.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import ExitStack, suppress

from ..context import Context
from ..kernels import BenchKernel, Cell
from ..report import Report, Row
from ..stats import summarize, summarize_ratio

OURS = "%%distributed"
TRIVIAL = "x = rank"
PEER_TIMEOUT = 120.0  # seconds; the peers' cells take a fifth of a second

ATTACH_PX = """
import dtrain_magics
_bench_view = dtrain_magics._magics.cluster.view()
_bench_view.activate()  # %%px on the magic's own engines

def _bench_set_x():
    global x
    x = rank
"""

NBDIST_SETUP = ["%load_ext nbdistributed", "%dist_init -n {ranks}", "%dist_mode --disable"]
NBDIST_PIDS = (
    "[p.pid for p in get_ipython().magics_manager.registry['DistributedMagic']"
    "._process_manager.processes]"
)
# nbdistributed's own %dist_shutdown runs `pkill -f` on broad patterns, which could hit other
# processes of this machine: stop its workers through its graceful path instead.
NBDIST_STOP = """
_m = get_ipython().magics_manager.registry['DistributedMagic']
try:
    _m._comm_manager.send_to_all("shutdown", {}, timeout=2.0)
except TimeoutError:
    pass  # the workers exit without answering
_m._comm_manager.shutdown()
_m._process_manager.shutdown()
_m._comm_manager = _m._process_manager = None
"""

ACCEL_SETUP = """
import socket
from accelerate import notebook_launcher

def _bench_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])

def _bench_set_x():
    from accelerate import PartialState
    global x
    x = PartialState().process_index
"""
ACCEL_CELL = "notebook_launcher(_bench_set_x, num_processes={ranks}, use_port=_bench_port())"


def run(ctx: Context, report: Report) -> None:
    rounds = 5 if ctx.quick else max(10, 4 * ctx.pairs)
    missing: list[str] = []
    with ExitStack() as stack:
        ours = stack.enter_context(ctx.kernel())
        ours.run("%load_ext dtrain_magics")
        ours.run(f"{ctx.magic_line()}\n{TRIVIAL}")  # starts the cluster
        ours.run(ATTACH_PX)
        arms: dict[str, Callable[[], Cell]] = {
            f"{OURS} (dashboard)": lambda: ours.run(f"{ctx.magic_line()}\n{TRIVIAL}"),
            f"{OURS} --no-widget": lambda: ours.run(f"{ctx.magic_line('--no-widget')}\n{TRIVIAL}"),
            "%%px (same engines)": lambda: ours.run(f"%%px\n{TRIVIAL}"),
            "view.apply_sync (same engines)": lambda: ours.run(
                "_ = _bench_view.apply_sync(_bench_set_x)"
            ),
        }
        own = set(arms)  # the magic and ipyparallel on its engines: their failures are ours
        nbd = _peer_kernel(ctx, stack, "nbdistributed", missing)
        if nbd is not None:
            for line in NBDIST_SETUP:
                nbd.run(line.format(ranks=ctx.ranks))
            stack.callback(_stop_nbdistributed, nbd, nbd.eval(NBDIST_PIDS))
            arms["nbdistributed %%distributed"] = lambda: nbd.run(f"%%distributed\n{TRIVIAL}")
        acc = _peer_kernel(ctx, stack, "accelerate", missing)
        if acc is not None:
            acc.run(ACCEL_SETUP)
            arms["accelerate notebook_launcher"] = lambda: acc.run(
                ACCEL_CELL.format(ranks=ctx.ranks)
            )
        gave_up: dict[str, str] = {}
        times: dict[str, list[Cell]] = {name: [] for name in arms}

        def attempt(name: str, round_: str) -> Cell | None:
            """Run one arm; a peer that fails or hangs is noted and left out from then on."""
            if name in gave_up:
                return None
            try:
                return arms[name]()
            except Exception as e:
                if name in own:
                    raise
                gave_up[name] = f"{round_}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                return None

        for name in arms:  # warm-up: first calls import and connect
            attempt(name, "warm-up")
            attempt(name, "warm-up")
        rng = random.Random(1)
        for r in range(rounds):
            order = list(arms)
            rng.shuffle(order)
            for name in order:
                cell = attempt(name, f"round {r + 1}")
                if cell is not None:
                    times[name].append(cell)
        ours.run("%dtrain stop")
    _report(report, times, missing, gave_up)


def _peer_kernel(
    ctx: Context, stack: ExitStack, module: str, missing: list[str]
) -> BenchKernel | None:
    kernel = stack.enter_context(ctx.kernel(PEER_TIMEOUT))
    if kernel.eval(f"__import__('importlib.util').util.find_spec('{module}') is not None"):
        return kernel
    missing.append(module)
    return None


def _stop_nbdistributed(kernel: BenchKernel, pids: list[int]) -> None:
    import psutil

    try:
        kernel.run(NBDIST_STOP)
    finally:
        for pid in pids:  # the workers this run started, should any have outlived the stop
            with suppress(psutil.Error):
                worker = psutil.Process(pid)
                if any("nbdistributed" in part for part in worker.cmdline()):  # not a reused pid
                    worker.kill()


def _report(
    report: Report, times: dict[str, list[Cell]], missing: list[str], gave_up: dict[str, str]
) -> None:
    ms = {name: [c.kernel_s * 1000 for c in cells] for name, cells in times.items()}
    client_ms = {name: [c.client_s * 1000 for c in cells] for name, cells in times.items()}
    report.raw["latency"] = {"kernel_ms": ms, "client_ms": client_ms}
    widget = f"{OURS} (dashboard)"
    ours = summarize(ms[widget])
    report.rows.append(
        Row(
            "latency",
            "warm trivial cell, dashboard on (ms)",
            f"{ours['median']:.1f} [{ours['q1']:.1f}–{ours['q3']:.1f}]",
            target="< 20 ms",
            met=ours["median"] < 20,
            note="kernel busy→idle",
        )
    )
    targets = {"%%px (same engines)": 1.5}
    plain = f"{OURS} --no-widget"
    pairs = [(widget, p) for p in ms if not p.startswith(OURS)] + [(plain, "%%px (same engines)")]
    for ours_name, peer in pairs:
        if not ms[peer]:  # gave up before its first timed round
            continue
        ratio = summarize_ratio(ms[ours_name], ms[peer])
        limit = targets.get(peer) if ours_name == widget else None
        report.rows.append(
            Row(
                "latency",
                f"warm cell (ms): {ours_name.replace(OURS, 'magic')}",
                _ms(ms[ours_name]),
                peer,
                _ms(ms[peer]),
                ratio,
                f"≤ {limit}×" if limit else "",
                ratio["median"] <= limit if limit else None,
            )
        )
    for module in missing:
        report.rows.append(Row("latency", "warm cell (ms)", "", module, "not installed"))
    for peer, why in gave_up.items():
        pairs_done = len(ms[peer])
        report.rows.append(
            Row("latency", "warm cell (ms)", "", peer, f"left out after {pairs_done} pairs")
        )
        report.notes.append(f"Latency: {peer} was left out after {pairs_done} pairs ({why}).")
    report.notes.append(
        "Latency: a cell's time is the kernel's busy→idle span for it (nbclient's recorded "
        "message timestamps); the client round trip is in the JSON. %%px and apply_sync run on "
        "the magic's own engines (dtrain_magics._magics.cluster.view(), view.activate())."
    )


def _ms(values: list[float]) -> str:
    s = summarize(values)
    return f"{s['median']:.1f}"
