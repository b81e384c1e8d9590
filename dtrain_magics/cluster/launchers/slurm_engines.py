"""ipyparallel's Slurm engine set, as the ``slurm`` launcher uses it (imported by ipyparallel
from its name when a cluster starts, so ipyparallel is not imported before)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Any

from ipyparallel.cluster.launcher import SlurmEngineSetLauncher

from ...errors import ClusterStartError

SUBMIT_WAIT = 60.0  # seconds sbatch has to answer


def sbatch_reason(stderr: str) -> str:
    """What ``sbatch`` said was wrong, in one line (``sbatch: error:`` prefixes dropped)."""
    lines = [line.strip() for line in stderr.splitlines()]
    said = [
        line.removeprefix("sbatch: error: ").removeprefix("sbatch: ")
        for line in lines
        if line and not line.startswith("Try ")
    ]
    return "; ".join(said) or "it gave no reason"


def refused(reason: str) -> ClusterStartError:
    """The one sentence for a job ``sbatch`` would not take."""
    return ClusterStartError(
        f"Slurm refused the engines' job ({reason}); change --nodes, --procs-per-node, "
        "--partition, --account, --time-limit or --sbatch-option."
    )


class SlurmEngines(SlurmEngineSetLauncher):  # type: ignore[misc]
    """Says why ``sbatch`` refused the job, keeps no job script once it is submitted (Slurm has
    its copy), and cancels nothing when no job was submitted."""

    # the name ipyparallel's cluster file records, read back with traitlets' import_item
    # (``ipcluster list``, ``ipcluster stop``): its default, ``module:Class``, is not importable
    entrypoint_name = "dtrain_magics.cluster.launchers.slurm_engines.SlurmEngines"

    def _run_command(self, command: list[str], **kwargs: Any) -> str:
        if command[-1:] != [self.batch_file]:  # scancel, scontrol: as ipyparallel runs them
            return str(super()._run_command(command, **kwargs))
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=SUBMIT_WAIT,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise ClusterStartError(
                f"sbatch did not answer in {SUBMIT_WAIT:.0f} s; check that Slurm's controller "
                "runs (sinfo), then run the cell again."
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(self.batch_file)
        if done.returncode != 0:
            raise refused(sbatch_reason(done.stderr))
        return str(done.stdout)

    def stop(self) -> str:
        if not self.job_id:  # sbatch failed: scancel of no job id only prints an error
            self.notify_stop({"job_id": "", "output": "no job was submitted"})
            return ""
        return str(super().stop())
