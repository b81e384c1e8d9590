"""The lab extension as installed: enabled, one version, endpoints behind authentication."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lab_server import lab_server

import dtrain_magics

ROOT = Path(__file__).resolve().parent.parent


def test_labextension_is_listed_enabled() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    text = out.stdout + out.stderr
    line = next((ln for ln in text.splitlines() if "dtrain-magics" in ln), "")
    assert f"dtrain-magics v{dtrain_magics.__version__}" in line, text
    assert "enabled" in line and "OK" in line, text


def test_python_and_js_versions_are_one() -> None:
    source = json.loads((ROOT / "labextension" / "package.json").read_text())
    built = json.loads((ROOT / "dtrain_magics" / "labextension" / "package.json").read_text())
    assert source["version"] == built["version"] == dtrain_magics.__version__


def test_server_extension_is_enabled() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    text = out.stdout + out.stderr
    assert any("dtrain_magics" in ln and "enabled" in ln for ln in text.splitlines()), text


def _status(request: urllib.request.Request | str) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.browser
def test_every_endpoint_requires_authentication(tmp_path: Path) -> None:
    with lab_server(tmp_path) as server:
        # with the token: the state answers, and the settings schema is served
        with urllib.request.urlopen(server.url("dtrain/state"), timeout=10) as response:
            assert json.load(response) == {"clusters": [], "runs": []}
        with urllib.request.urlopen(
            server.url("lab/api/settings/dtrain-magics:plugin"), timeout=10
        ) as response:
            schema = json.load(response)["schema"]["properties"]
        assert {"nodes", "procsPerNode", "pollInterval", "insertMagic"} <= set(schema)
        for path in ("dtrain/state", "dtrain/clusters", "dtrain/runs", "dtrain/runs/x"):
            assert _status(f"{server.base}/{path}") == 403, path
        for path in (
            "dtrain/runs/x/stop",
            "dtrain/clusters/abc/stop",
            "dtrain/clusters/abc/restart",
        ):
            request = urllib.request.Request(f"{server.base}/{path}", data=b"", method="POST")
            assert _status(request) == 403, path
        # authenticated, but nothing to act on: clear 404s, not errors
        for path in ("dtrain/runs/x/stop", "dtrain/clusters/abc/stop"):
            request = urllib.request.Request(server.url(path), data=b"", method="POST")
            assert _status(request) == 404, path


def test_wheel_carries_the_built_extension_and_server_config(tmp_path: Path) -> None:
    """Installing the wheel installs the lab extension and enables the server extension."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("dtrain_magics-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = f"dtrain_magics-{dtrain_magics.__version__}.data/data/share/jupyter/labextensions"
    assert f"{share}/dtrain-magics/package.json" in names
    assert f"{share}/dtrain-magics/install.json" in names
    assert any(n.startswith(f"{share}/dtrain-magics/static/remoteEntry.") for n in names)
    assert any(n.endswith("schemas/dtrain-magics/plugin.json") for n in names)
    config = "data/etc/jupyter/jupyter_server_config.d/dtrain_magics.json"
    assert any(n.endswith(config) for n in names), names
