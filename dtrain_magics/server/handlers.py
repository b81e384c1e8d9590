"""``/dtrain/`` endpoints: list clusters and runs, stop a run, stop or restart a cluster.

Every verb requires Jupyter's authentication. Listing reads the records kernels write to disk;
stopping interrupts the kernel (as the notebook's stop button does), and cluster control runs
``%dtrain stop`` or ``%dtrain restart`` in the kernel after interrupting any run in progress.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..store.paths import clusters_dir, runs_dir
from ..store.schema import ACTIVE_RUN
from .listing import find_run, list_clusters, list_runs

log = logging.getLogger(__name__)
CLUSTER_ACTIONS = ("stop", "restart")
_background: set[asyncio.Task[Any]] = set()


class _DtrainHandler(APIHandler):
    async def kernel_paths(self) -> dict[str, str]:
        """This server's kernels: kernel id → notebook path ("" for a kernel without one)."""
        paths = dict.fromkeys(self.kernel_manager.list_kernel_ids(), "")
        for session in await self.session_manager.list_sessions():
            kernel = session.get("kernel") or {}
            if kernel.get("id") in paths:
                paths[kernel["id"]] = session.get("path", "")
        return paths

    @property
    def server_root(self) -> str | None:
        """The directory notebook paths start from (a file system's contents manager)."""
        root = getattr(self.contents_manager, "root_dir", None)
        return str(root) if root else None

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt a kernel, as the notebook's stop button does."""
        result: Any = self.kernel_manager.interrupt_kernel(kernel_id)  # type: ignore[func-returns-value]
        if inspect.isawaitable(result):
            await result


class StateHandler(_DtrainHandler):
    """``GET /dtrain/state``: clusters and runs in one answer (what the sidebar polls)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        paths = await self.kernel_paths()
        self.finish(
            json.dumps(
                {
                    "clusters": list_clusters(clusters_dir(), paths),
                    "runs": list_runs(runs_dir(), paths, server_root=self.server_root),
                }
            )
        )


class ClustersHandler(_DtrainHandler):
    """``GET /dtrain/clusters``: the clusters of this server's kernels."""

    @tornado.web.authenticated
    async def get(self) -> None:
        paths = await self.kernel_paths()
        self.finish(json.dumps({"clusters": list_clusters(clusters_dir(), paths)}))


class RunsHandler(_DtrainHandler):
    """``GET /dtrain/runs``: the newest runs, newest first."""

    @tornado.web.authenticated
    async def get(self) -> None:
        paths = await self.kernel_paths()
        runs = list_runs(runs_dir(), paths, server_root=self.server_root)
        self.finish(json.dumps({"runs": runs}))


class RunHandler(_DtrainHandler):
    """``GET /dtrain/runs/<id>``: one run; ``POST /dtrain/runs/<id>/stop`` interrupts it."""

    @tornado.web.authenticated
    async def get(self, run_id: str, action: str | None = None) -> None:
        run = find_run(runs_dir(), run_id, await self.kernel_paths(), self.server_root)
        if run is None:
            raise tornado.web.HTTPError(404, f"no run {run_id!r}")
        self.finish(json.dumps(run))

    @tornado.web.authenticated
    async def post(self, run_id: str, action: str | None = None) -> None:
        if action != "stop":
            raise tornado.web.HTTPError(404, "runs support only POST .../stop")
        run = find_run(runs_dir(), run_id, await self.kernel_paths(), self.server_root)
        if run is None:
            raise tornado.web.HTTPError(404, f"no run {run_id!r}")
        if run["status"] not in ACTIVE_RUN:
            raise tornado.web.HTTPError(409, f"run {run_id} is {run['status']}, not running")
        if not run["live"]:
            raise tornado.web.HTTPError(409, f"run {run_id} belongs to a kernel of another server")
        await self.interrupt(run["kernel_id"])
        self.set_status(202)
        self.finish(json.dumps({"run": run_id, "action": "stop"}))


class ClusterActionHandler(_DtrainHandler):
    """``POST /dtrain/clusters/<kernel id>/(stop|restart)``."""

    @tornado.web.authenticated
    async def post(self, kernel_id: str, action: str) -> None:
        if action not in CLUSTER_ACTIONS:
            raise tornado.web.HTTPError(404, f"clusters support {', '.join(CLUSTER_ACTIONS)}")
        clusters = list_clusters(clusters_dir(), await self.kernel_paths())
        cluster = next((c for c in clusters if c.get("kernel_id") == kernel_id), None)
        if cluster is None:
            raise tornado.web.HTTPError(404, f"no cluster for kernel {kernel_id!r}")
        if cluster.get("state") in ("starting", "busy"):
            await self.interrupt(kernel_id)
        task = asyncio.create_task(
            run_in_kernel(self.kernel_manager.get_kernel(kernel_id), f"%dtrain {action}")
        )
        _background.add(task)
        task.add_done_callback(_background.discard)
        self.set_status(202)
        self.finish(json.dumps({"kernel_id": kernel_id, "action": action}))


async def run_in_kernel(kernel: Any, code: str, timeout: float = 180.0) -> dict[str, Any] | None:
    """Execute ``code`` silently in ``kernel`` (queued after what it runs now); its reply."""
    client = kernel.client()
    client.start_channels()
    try:
        msg_id = client.execute(code, silent=True, store_history=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                reply = await client.get_shell_msg(timeout=left)
            except Exception:  # timed out (queue.Empty) or the kernel went away
                log.debug("no reply from kernel to %r", code, exc_info=True)
                return None
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(reply["content"])
        return None
    finally:
        client.stop_channels()


def route_handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    def url(path: str) -> str:
        return url_path_join(base_url, "dtrain", path)

    run_id = r"(?P<run_id>[\w.-]+)"
    return [
        (url("state"), StateHandler),
        (url("clusters"), ClustersHandler),
        (url(r"clusters/(?P<kernel_id>[\w-]+)/(?P<action>\w+)"), ClusterActionHandler),
        (url("runs"), RunsHandler),
        (url(f"runs/{run_id}"), RunHandler),
        (url(f"runs/{run_id}/(?P<action>\\w+)"), RunHandler),
    ]
