"""``%distributed train.py ARGS``: unchanged training scripts on the real cluster, as
``mpiexec -n 2 python train.py ARGS`` would run them from the notebook's working directory."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import rank_values
from IPython.core.error import UsageError
from kernel_session import KernelSession

import dtrain_magics
from dtrain_magics.errors import RankError, RunTimeoutError

pytestmark = pytest.mark.cluster

# written the way Horovod's own examples are (examples/pytorch/pytorch_mnist.py): argparse,
# hvd.init(), DistributedSampler, broadcast_parameters, DistributedOptimizer, a __main__ guard
TRAIN = """
import argparse
import os
import sys

import horovod.torch as hvd
import torch
import torch.nn.functional as F
import torch.utils.data.distributed

from model_beside import Net

parser = argparse.ArgumentParser(description="Horovod-style training")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--data", default="data.pt")


def metric_average(value, name):
    return hvd.allreduce(torch.tensor(value), name=name).item()


def main():
    args = parser.parse_args()
    hvd.init()
    torch.manual_seed(42)
    print("argv", sys.argv, "name", __name__, "rank", hvd.rank(), "of", hvd.size())
    print("cwd", os.getcwd(), "first path", sys.path[0])
    x, y = torch.load(args.data)  # relative: the notebook's working directory
    dataset = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.distributed.DistributedSampler(
        dataset, num_replicas=hvd.size(), rank=hvd.rank()
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    torch.manual_seed(hvd.rank())  # different initial weights: broadcast must fix them
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        total = 0.0
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.mse_loss(model(data), target)
            loss.backward()
            optimizer.step()
            total += loss.item()
        loss = metric_average(total / len(loader), "avg_loss")
        if hvd.rank() == 0:
            print(f"epoch {epoch} lr {args.lr} loss {loss:.4f}")
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print("weights", [round(w, 5) for w in weights.tolist()])


if __name__ == "__main__":
    main()
"""

MODEL = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x){extra}
"""


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory, the notebook's working directory, holding Horovod-style scripts
    in ``jobs/`` (next to a module they import) and their data."""
    import torch

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train.py").write_text(TRAIN)
    (jobs / "model_beside.py").write_text(MODEL.format(extra=""))
    torch.manual_seed(0)
    torch.save((torch.randn(64, 4), torch.randn(64, 1)), tmp_path / "data.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _script(directory: Path, name: str, body: str) -> str:
    (directory / name).write_text(textwrap.dedent(body))
    return name


def test_a_horovod_example_runs_as_under_mpiexec(
    ip: Any, cluster: Any, scripts: Path, capsys: Any
) -> None:
    run_state = "import sys, os\nbefore = (sys.argv, list(sys.path), os.getcwd())"
    ip.run_cell_magic("distributed", "--nodes 2", run_state)
    before = rank_values(cluster, "before")
    ip.run_line_magic("distributed", "--nodes 2 jobs/train.py --epochs 3 --lr 0.05")
    out = capsys.readouterr().out
    argv = "['jobs/train.py', '--epochs', '3', '--lr', '0.05']"
    assert f"[rank 0] argv {argv} name __main__ rank 0 of 2" in out
    assert f"[rank 1] argv {argv} name __main__ rank 1 of 2" in out
    assert f"[rank 1] cwd {scripts} first path {scripts / 'jobs'}" in out
    assert re.search(r"\[rank 0\] epoch 3 lr 0.05 loss \d", out)
    weights = re.findall(r"\[rank (\d)\] weights (\[.*\])", out)
    assert len(weights) == 2 and weights[0][1] == weights[1][1]  # DistributedOptimizer
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "succeeded"
    assert record.options["script"] == "jobs/train.py --epochs 3 --lr 0.05"

    # the cells' namespaces and process state are as they were
    ip.run_cell_magic(
        "distributed",
        "--nodes 2",
        "after = (sys.argv, list(sys.path), os.getcwd())\n"
        "leaked = [n for n in ('main', 'parser', 'Net', 'args', 'metric_average') if n in dir()]",
    )
    assert rank_values(cluster, "after") == before
    assert rank_values(cluster, "leaked") == [[], []]


def test_a_module_beside_the_script_is_read_again_when_edited(
    ip: Any, cluster: Any, scripts: Path, capsys: Any
) -> None:
    show = _script(
        scripts / "jobs",
        "show.py",
        """
        import model_beside
        print("extra", getattr(model_beside, "EXTRA", None))
        """,
    )
    ip.run_line_magic("distributed", f"--nodes 2 jobs/{show}")
    (scripts / "jobs" / "model_beside.py").write_text(MODEL.format(extra="\n\nEXTRA = 'edited'"))
    ip.run_line_magic("distributed", f"--nodes 2 jobs/{show}")
    out = capsys.readouterr().out
    assert "[rank 1] extra None" in out and "[rank 1] extra edited" in out


def test_exit_codes(ip: Any, cluster: Any, scripts: Path, capsys: Any) -> None:
    exits = _script(
        scripts,
        "exits.py",
        """
        import sys
        import horovod.torch as hvd

        hvd.init()
        code = sys.argv[1]
        if hvd.rank() == 1:
            sys.exit(int(code) if code.isdigit() else None if code == "none" else code)
        """,
    )
    ip.run_line_magic("distributed", f"--nodes 2 {exits} 0")
    ip.run_line_magic("distributed", f"--nodes 2 {exits} none")
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        ip.run_line_magic("distributed", f"--nodes 2 {exits} 3")
    assert str(info.value) == "rank 1 exited with code 3."
    assert len(info.value._render_traceback_()) == 1  # the sentence, no stack
    assert time.monotonic() - started < 10
    record = dtrain_magics.last_run()
    assert record is not None and record.exit_reason == "rank 1 exited with code 3"
    capsys.readouterr()
    with pytest.raises(RankError, match=r"^rank 1 exited with code 1\.$"):
        ip.run_line_magic("distributed", f"--nodes 2 {exits} no-such-config")
    assert "[rank 1] no-such-config" in capsys.readouterr().err  # as Python prints it
    with pytest.raises(RankError, match=r"^rank \d exited with code 2\."):  # argparse's usage
        ip.run_line_magic("distributed", "--nodes 2 jobs/train.py --epochs three")
    ip.run_cell_magic("distributed", "--nodes 2", "alive = rank")
    assert rank_values(cluster, "alive") == [0, 1]


def test_an_exception_shows_the_scripts_traceback(ip: Any, cluster: Any, scripts: Path) -> None:
    boom = _script(
        scripts,
        "boom.py",
        """
        import horovod.torch as hvd
        import torch


        def shard(rank):
            if rank == 1:
                raise ValueError(f"bad shard on rank {rank}")
            return torch.ones(1)


        if __name__ == "__main__":
            hvd.init()
            hvd.allreduce(shard(hvd.rank()))  # rank 0 waits here for rank 1
        """,
    )
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        ip.run_line_magic("distributed", f"--nodes 2 {boom}")
    assert time.monotonic() - started < 20
    assert str(info.value).startswith("rank 1 failed with ValueError: bad shard on rank 1.")
    rendered = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(info.value._render_traceback_()))
    assert f"{scripts / boom}:14" in rendered and f"{scripts / boom}:8, in shard" in rendered
    assert "runpy" not in rendered and "run_script" not in rendered


def test_a_script_that_does_not_compile_shows_pythons_lines(
    ip: Any, cluster: Any, scripts: Path
) -> None:
    broken = _script(scripts, "broken.py", "import sys\nx = (1,\n")
    with pytest.raises(RankError) as info:
        ip.run_line_magic("distributed", f"--nodes 2 {broken}")
    assert str(info.value).startswith("rank 0 failed with SyntaxError: '(' was never closed")
    rendered = "\n".join(info.value._render_traceback_())
    assert f'File "{scripts / broken}", line 2' in rendered and "x = (1," in rendered, rendered
    assert "run_script" not in rendered and "interactiveshell" not in rendered, rendered


def test_standard_input_is_empty_on_every_rank(
    ip: Any, cluster: Any, scripts: Path, capsys: Any
) -> None:
    """Rank 0 read the notebook's standard input through mpiexec: a read waited for ever."""
    reads = _script(scripts, "reads.py", "import sys\nprint('READ', repr(sys.stdin.read()))\n")
    ip.run_line_magic("distributed", f"--nodes 2 --timeout 60 {reads}")
    out = capsys.readouterr().out
    assert "[rank 0] READ ''" in out and "[rank 1] READ ''" in out, out


def test_timeout_and_the_cells_after_it(ip: Any, cluster: Any, scripts: Path) -> None:
    loop = _script(
        scripts,
        "loop.py",
        """
        import time
        import horovod.torch as hvd
        import torch

        hvd.init()
        print("looping", flush=True)
        while True:
            hvd.allreduce(torch.ones(1))
            time.sleep(0.01)
        """,
    )
    started = time.monotonic()
    with pytest.raises(RunTimeoutError, match="--timeout 2 s"):
        ip.run_line_magic("distributed", f"--nodes 2 --timeout 2 {loop}")
    assert time.monotonic() - started < 15
    ip.run_cell_magic(
        "distributed", "--nodes 2", "import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum)"
    )
    assert [t.item() for t in rank_values(cluster, "ok")] == [2.0, 2.0]


def test_a_script_on_some_ranks(ip: Any, cluster: Any, scripts: Path, capsys: Any) -> None:
    alone = _script(scripts, "alone.py", "import horovod.torch as hvd\nprint('on', hvd.rank())\n")
    ip.run_line_magic("distributed", f"--nodes 2 --ranks 1 {alone}")
    assert capsys.readouterr().out.count("[rank 1] on 1") == 1


def test_arguments_split_as_a_shell_splits_them(
    ip: Any, cluster: Any, scripts: Path, capsys: Any
) -> None:
    argv = _script(scripts, "argv.py", "import sys\nprint('ARGV', sys.argv[1:])\n")
    line = f"""--nodes 2 -- {argv} --name "my run" --data '/tmp/my dir' --f="a b" plain"""
    ip.run_line_magic("distributed", line)
    words = ["--name", "my run", "--data", "/tmp/my dir", "--f=a b", "plain"]
    assert f"[rank 1] ARGV {words}" in capsys.readouterr().out
    record = dtrain_magics.last_run()
    assert record is not None
    assert (
        record.options["script"] == "argv.py --name 'my run' --data '/tmp/my dir' '--f=a b' plain"
    )


def test_a_torchrun_script_finds_its_variables(
    ip: Any, cluster: Any, scripts: Path, capsys: Any
) -> None:
    body = (
        "import os\nimport torch.distributed as dist\n"
        "if not dist.is_initialized():\n    dist.init_process_group('gloo')\n"
        "local_rank = int(os.environ['LOCAL_RANK'])\n"
        "print('TORCHRUN', os.environ['RANK'], os.environ['WORLD_SIZE'], local_rank,"
        " os.environ['LOCAL_WORLD_SIZE'], dist.get_rank())\n"
    )
    script = _script(scripts, "torchrun_style.py", body)
    ip.run_line_magic("distributed", f"--nodes 2 --backend torch {script}")
    assert "[rank 1] TORCHRUN 1 2 0 1 1" in capsys.readouterr().out  # 2 nodes × 1 proc
    ip.run_cell_magic(
        "distributed", "--nodes 2 --backend horovod", "import os\nprint('RANK' in os.environ)"
    )
    assert "[rank 1] False" in capsys.readouterr().out  # Horovod's ranks: as under mpiexec


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--nodes 2", "name the script to run: %distributed [flags] train.py [its arguments]."),
        ("--nodes 2 --", "name the script to run: %distributed [flags] train.py [its arguments]."),
        ("--nodes 2 missing.py", "the script missing.py was not found in "),
        ("--nodes 2 jobs", "jobs is a directory: name the script in it to run."),
        ("--nodes 2 jobs/train.py --name 'open", "the line does not split into words (No closing"),
        ("--nodes 2 --pull x jobs/train.py", "--push and --pull reach the cells' namespaces"),
    ],
)
def test_usage_errors(ip: Any, cluster: Any, scripts: Path, line: str, message: str) -> None:
    sent = len(cluster.client.history)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("distributed", line)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert len(cluster.client.history) == sent


def test_in_a_kernel_progress_output_and_stop(tmp_path: Path) -> None:
    """Through a real kernel: the line is awaited like a cell (Stop works), the dashboard's
    record shows the script's progress, and an interrupt stops every rank."""
    (tmp_path / "progress.py").write_text(
        textwrap.dedent(
            """
            import sys
            import time
            import dtrain_magics.rank as dtrain

            for step in dtrain.progress(range(int(sys.argv[1])), desc="steps"):
                time.sleep(0.05)
            print("done", flush=True)
            """
        )
    )
    (tmp_path / "forever.py").write_text(
        "import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.05)\n"
    )
    session = KernelSession(env=_env(), cwd=tmp_path)
    try:
        assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = session.run("steps = 12\n%distributed --nodes 2 progress.py $steps", timeout=240)
        assert reply.status == "ok", reply.text
        assert "[rank 0] done" in reply.text and "[rank 1] done" in reply.text
        records = [
            o["data"]["text/html"]
            for o in reply.outputs
            if "dtrain-record" in o.get("data", {}).get("text/html", "")
        ]
        assert records, reply.text
        assert 'data-rank="1" data-status="ok" data-n="12" data-total="12"' in records[-1]
        assert "progress.py 12" in records[-1]

        msg_id = session.submit("%distributed --nodes 2 --no-widget forever.py")
        assert session.collect(msg_id, timeout=60, until="[rank 1] looping").status == "running"
        interrupted = time.monotonic()
        session.km.interrupt_kernel()
        reply = session.collect(msg_id, timeout=30)
        assert time.monotonic() - interrupted < 10
        assert reply.status == "error" and "interrupted: every rank was stopped" in reply.text
        reply = session.run("%%distributed --no-widget\nprint('next', rank)", timeout=60)
        assert "[rank 1] next 1" in reply.text
    finally:
        session.close()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
