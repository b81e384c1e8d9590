"""A training script as the line form ``%distributed train.py ARGS`` runs it on the ranks."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from ..config.options import RunOptions
from ..errors import BadOptions

RUNNER = "dtrain_magics.rank.script"  # where ``run_script`` lives on the ranks


@dataclass(frozen=True)
class Script:
    """``path`` (as given, relative to ``cwd``) with its command-line ``args``."""

    path: str
    args: tuple[str, ...]
    cwd: str

    @classmethod
    def from_command(cls, words: list[str], cwd: str | None = None) -> Script:
        """``["train.py", "--epochs", "3"]`` from the notebook's working directory, checked to
        name a file (``BadOptions`` otherwise)."""
        cwd = cwd or os.getcwd()
        if words[:1] == ["--"]:  # the end of the flags, as mpiexec takes it
            words = words[1:]
        if not words:
            raise BadOptions(
                "name the script to run: %distributed [flags] train.py [its arguments]."
            )
        path, *args = words
        if os.path.isdir(os.path.join(cwd, path)):
            raise BadOptions(f"{path} is a directory: name the script in it to run.")
        if not os.path.isfile(os.path.join(cwd, path)):
            raise BadOptions(
                f"the script {path} was not found in {cwd} (the notebook's working directory); "
                "give its path from there, or an absolute one."
            )
        return cls(path, tuple(args), cwd)

    @property
    def command(self) -> str:
        """The command line as a shell would show it: ``train.py --epochs 3``."""
        return shlex.join([self.path, *self.args])

    def code(self, options: RunOptions) -> str:
        """What each rank executes: ``run_script`` in a fresh namespace, nothing bound;
        ``BadOptions`` for the flags that reach the cells' namespaces."""
        if options.check_replicas is not None:
            raise BadOptions(
                "--check-replicas reads the cells' namespaces, and a script runs in a fresh "
                "one: call dtrain.check_replicas(model) in the script instead."
            )
        if options.push or options.pull:
            raise BadOptions(
                "--push and --pull reach the cells' namespaces, and a script runs in a "
                "fresh one: pass it values as arguments and have it save what it makes."
            )
        return (
            f"__import__({RUNNER!r}, fromlist=['run_script'])"
            f".run_script({self.path!r}, {list(self.args)!r}, {self.cwd!r})"
        )
