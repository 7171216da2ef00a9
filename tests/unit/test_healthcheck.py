"""docker/healthcheck.py finds the server's port the way the server does (the container test runs it
inside the image; these cases cover every source of the port)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker" / "healthcheck.py")
assert spec is not None and spec.loader is not None
healthcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(healthcheck)


def test_port_from_the_command_line_then_env_then_the_config_file_then_8000(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("server: {port: 9123}\nmodels: []\n")
    serve = ["hotswap", "serve", "--config", str(config)]
    assert healthcheck.port_of([*serve, "--port", "9001"], {"HOTSWAP_SERVER__PORT": "9002"}) == 9001
    assert healthcheck.port_of([*serve, "--port=9003"], {}) == 9003
    assert healthcheck.port_of(serve, {"HOTSWAP_SERVER__PORT": "9002"}) == 9002
    assert healthcheck.port_of(serve, {}) == 9123
    assert healthcheck.port_of(["hotswap", "serve", f"--config={config}"], {}) == 9123
    assert healthcheck.port_of(["hotswap", "serve", "-c", str(config)], {}) == 9123
    assert healthcheck.port_of(["hotswap", "serve", "--config", str(tmp_path / "missing.yaml")], {}) == 8000
    config.write_text("server: {host: 0.0.0.0}\n")
    assert healthcheck.port_of(serve, {"HOTSWAP_SERVER__PORT": ""}) == 8000


def test_the_image_config_is_read_when_the_command_names_none(tmp_path, monkeypatch):
    image_config = tmp_path / "image.yaml"
    image_config.write_text("server: {port: 8555}\n")
    monkeypatch.setattr(healthcheck, "DEFAULT_CONFIG", str(image_config))
    assert healthcheck.port_of(["hotswap", "serve"], {}) == 8555
    assert healthcheck.option(["a", "--port", "1", "--port", "2"], "--port") == "2", "the last one wins"
