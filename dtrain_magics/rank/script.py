"""Run an unchanged training script on a rank, as ``mpiexec -n N python train.py ARGS`` would.

``run_script`` runs the file as ``__main__`` in a fresh module with ``sys.argv`` set to the
command line, the script's directory first on ``sys.path`` and the notebook's working directory
as the current one, and puts all three back afterwards: the cells' namespace never sees the
script's globals. Modules the script imported from its own directory are forgotten, so an edited
``model.py`` beside it is read again next time, as a new process would. ``sys.exit(0)`` (or
``None``) is a success; another code raises ``ScriptExit``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import sys
import traceback
from importlib.machinery import SourceFileLoader
from types import ModuleType, TracebackType

from .tracebacks import rebuild, render


class ScriptExit(Exception):
    """The script called ``sys.exit`` with a code other than 0."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exited with code {code}")
        self.code = code

    def _render_traceback_(self) -> list[str]:
        return []  # the code says it all, and whatever the script printed is in its output


class ScriptSyntaxError(Exception):
    """The script does not compile; shown as ``python train.py`` shows it (IPython would show
    a ``SyntaxError`` with the frames of the code that compiled it)."""

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(f"failed with SyntaxError: {error}")
        self.lines = "".join(traceback.format_exception_only(type(error), error)).splitlines()

    def _render_traceback_(self) -> list[str]:
        return self.lines


def run_script(path: str, args: list[str], cwd: str) -> None:
    """Run the script at ``path`` (as given on the command line, relative to ``cwd``)."""
    saved_cwd = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError as e:
        raise RuntimeError(
            f"the notebook's working directory {cwd} is not reachable on this rank's host "
            f"({e.strerror}); the script runs there, as under mpiexec."
        ) from None
    file = os.path.abspath(path)
    here = os.path.dirname(file)
    saved_argv, saved_path, saved_modules = sys.argv, list(sys.path), set(sys.modules)
    saved_main = sys.modules["__main__"]
    sys.argv = [path, *args]
    sys.path.insert(0, here)
    try:
        sys.modules["__main__"] = main = _main_module(file)
        with io.open_code(file) as f:
            source = f.read()
        try:
            code = compile(source, file, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise ScriptSyntaxError(e) from None
        exec(code, main.__dict__)
    except SystemExit as e:
        status = _exit_code(e.code)
        if status:
            raise ScriptExit(status) from None
    except BaseException as e:
        _show_from_script(e, file)
        raise
    finally:
        sys.modules["__main__"] = saved_main
        sys.argv, sys.path[:] = saved_argv, saved_path
        _forget_modules(here, set(sys.modules) - saved_modules)
        os.chdir(saved_cwd)


def _main_module(file: str) -> ModuleType:
    """A fresh ``__main__`` for the script, as ``python file`` makes it (what ``runpy.run_path``
    does, but with ``sys.argv[0]`` left as given on the command line)."""
    main = ModuleType("__main__")
    main.__file__ = file
    main.__loader__ = SourceFileLoader("__main__", file)
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    return main


def _exit_code(code: object) -> int:
    """The process exit status ``sys.exit(code)`` gives (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _show_from_script(error: BaseException, path: str) -> None:
    """Have the error's traceback start at the script, as ``python train.py`` shows it."""
    frames: list[TracebackType] = []
    tb = error.__traceback__
    while tb is not None:
        if frames or os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
            frames.append(tb)
        tb = tb.tb_next
    if not frames:
        return
    # an exception type without a __dict__ keeps IPython's usual traceback
    with contextlib.suppress(AttributeError):
        error._render_traceback_ = lambda: render(error, rebuild(frames))  # type: ignore[attr-defined]


def _forget_modules(directory: str, names: set[str]) -> None:
    """Drop the modules among ``names`` that were loaded from under ``directory`` (the user's
    own modules beside the script, not installed packages)."""
    prefix = directory.rstrip(os.sep) + os.sep
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None) or ""
        installed = "site-packages" in file or "dist-packages" in file
        if file.startswith(prefix) and not installed:
            del sys.modules[name]
