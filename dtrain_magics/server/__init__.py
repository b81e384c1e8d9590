"""The Jupyter server extension: ``/dtrain/`` endpoints the JupyterLab sidebar polls."""

from __future__ import annotations

from typing import Any

from .handlers import route_handlers


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Register the ``/dtrain/`` handlers on the server's web app."""
    web_app = server_app.web_app
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(".*$", route_handlers(base_url))
    server_app.log.info("dtrain-magics server extension loaded at %sdtrain/", base_url)
