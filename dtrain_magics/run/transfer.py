"""Values between the notebook and the ranks: ``--push`` before a cell, ``--pull`` after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cluster.ranks import first_remote_error
from ..errors import BadOptions


def collect_push(namespace: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``names`` from the notebook, checked to be defined and serialisable."""
    from ipyparallel.serialize import serialize_object

    values = {}
    for name in names:
        if name not in namespace:
            raise BadOptions(f"--push: {name} is not defined in the notebook; define it first.")
        try:
            serialize_object(namespace[name])
        except Exception as e:
            raise BadOptions(
                f"--push: {name} cannot be sent to the ranks ({type(e).__name__}: {e})."
            ) from None
        values[name] = namespace[name]
    return values


def _missing_names(names: list[str]) -> list[str]:
    """Runs on a rank: which of ``names`` its namespace lacks."""
    from IPython import get_ipython

    ns = get_ipython().user_ns
    return [n for n in names if n not in ns]


def pull(view: Any, names: tuple[str, ...], rank: int = 0) -> dict[str, Any]:
    """Copy ``names`` from the namespace behind ``view`` (``rank``'s blocking view)."""
    missing = view.apply_sync(_missing_names, list(names))
    if missing:
        raise BadOptions(
            f"--pull: rank {rank} does not define {', '.join(missing)}; assign it in the cell "
            "or drop it from --pull."
        )
    try:
        taken = view.apply_sync(_take, list(names))
        values = [v.load() if isinstance(v, SavedByTorch) else v for v in taken]
    except Exception as e:
        raise BadOptions(
            f"--pull: could not copy {', '.join(names)} from rank {rank}: {first_remote_error(e)}"
        ) from None
    return dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class SavedByTorch:
    """Values saved by ``torch.save`` on a rank that uses CUDA, loaded onto the notebook's CPU:
    pickled as they are, a GPU tensor comes back on its GPU (or fails in a kernel without
    CUDA, as on a cluster's login node)."""

    data: bytes

    def load(self) -> Any:
        """The value, its tensors on the CPU."""
        import io

        import torch

        return torch.load(io.BytesIO(self.data), map_location="cpu", weights_only=False)


def _take(names: list[str]) -> list[Any]:
    """Runs on a rank: the values of ``names``, each one that holds GPU tensors saved by torch
    (``SavedByTorch``), the others as they are (ipyparallel sends functions, classes of the
    cell and arrays its own way)."""
    import sys

    from IPython import get_ipython

    ns = get_ipython().user_ns
    values = [ns[n] for n in names]
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return values
    return [_saved(v) if _holds_gpu_tensors(v) else v for v in values]


def _saved(value: Any) -> SavedByTorch:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return SavedByTorch(buffer.getvalue())


class _GpuTensorFound(Exception):
    pass


def _holds_gpu_tensors(value: Any) -> bool:
    """Whether pickling ``value`` meets a tensor stored on a GPU (walked by a pickler that
    writes nothing; a value that pickle cannot walk is left to ipyparallel)."""
    import pickle

    import torch

    class Finder(pickle.Pickler):
        def persistent_id(self, obj: Any) -> None:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                raise _GpuTensorFound

    class Nowhere:
        def write(self, data: bytes) -> int:
            return len(data)

    try:
        Finder(Nowhere(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except _GpuTensorFound:
        return True
    except Exception:
        return False
    return False
