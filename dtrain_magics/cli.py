"""``dtrain-magics``: install Horovod for this environment's torch, and check the environment.

dtrain-magics install-horovod   build (or take from the cache) and install Horovod
dtrain-magics doctor            report the stack; exit 0 only when a 2-rank run works
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .install.facts import InstallError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtrain-magics",
        description="Install Horovod for this environment's torch, and check the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser(
        "install-horovod",
        help="build (or take from the cache) and install Horovod for this environment's torch",
        description="Build Horovod 0.28.1 for the environment's torch (CPU: MPI and Gloo; CUDA: "
        "also NCCL GPU operations) and MPI, or take the wheel from the cache, and install it.",
    )
    install.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the environment to install into (default: this one)",
    )
    install.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="wheel cache (default: $DTRAIN_CACHE or ~/.cache/dtrain-magics)",
    )
    install.add_argument(
        "--cuda-toolkit",
        choices=("auto", "system", "pypi"),
        default="auto",
        help="for a CUDA torch: the machine's toolkit (CUDA_HOME, nvcc on PATH, /usr/local/cuda) "
        "if its version matches torch's, else PyPI's (auto); or force one",
    )
    install.add_argument(
        "--rebuild", action="store_true", help="build even when a cached wheel exists"
    )
    doctor = commands.add_parser(
        "doctor",
        help="report Python, torch, MPI, Horovod and GPUs; run a 2-rank allreduce",
        description="Print one line per part of the stack and a sentence for each problem; exit "
        "0 only when a 2-rank mpiexec Horovod allreduce works.",
    )
    doctor.add_argument("--python", default=sys.executable, help="interpreter to check")
    doctor.add_argument(
        "--timeout", type=float, default=120, help="seconds allowed for each check (default 120)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dtrain-magics`` console command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "install-horovod":
            from .install.horovod import install_horovod

            install_horovod(
                args.python,
                cache_dir=args.cache_dir,
                cuda_toolkit=args.cuda_toolkit,
                rebuild=args.rebuild,
                report=lambda line: print(f"[horovod] {line}", flush=True),
            )
            return 0
        from .install.doctor import doctor
        from .store.paths import logs_dir

        # where each kernel's diagnostics log (every error the package caught) is written
        logs = f"{'Logs':<9} {logs_dir()}/kernel-<kernel id>.log (%dtrain status names the file)"
        ready = doctor(args.python, timeout=args.timeout, notes=(logs,))
        return 0 if ready else 1
    except InstallError as e:
        print(f"dtrain-magics: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dtrain-magics: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
