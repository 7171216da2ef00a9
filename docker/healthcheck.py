"""The image's HEALTHCHECK: exit 0 when /v2/health/ready answers 200 (health needs no token).

The port is found as the server finds it: `--port` on the server's command line (PID 1's, the
container's `hotswap serve ...`), else HOTSWAP_SERVER__PORT, else `server.port` in the file given
by `--config` (the image's /etc/hotswap/config.yaml unless the command says otherwise), else 8000.
So a mounted config or a command that moves the port needs no change here.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = 8000
DEFAULT_CONFIG = "/etc/hotswap/config.yaml"


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in argv (the last one wins, as with click)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def config_port(path: str) -> int | None:
    try:
        import yaml

        server = (yaml.safe_load(Path(path).read_text()) or {}).get("server") or {}
        return int(server["port"]) if "port" in server else None
    except Exception:  # unreadable or odd: the server would have refused it; fall back
        return None


def port_of(argv: list[str], env: Mapping[str, str]) -> int:
    """The port the server given `argv` and `env` listens on."""
    for value in (option(argv, "--port"), env.get("HOTSWAP_SERVER__PORT")):
        if value and value.isdigit():
            return int(value)
    return config_port(option(argv, "--config") or option(argv, "-c") or DEFAULT_CONFIG) or DEFAULT_PORT


def server_argv() -> list[str]:
    try:
        return Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def main() -> int:
    port = port_of(server_argv(), os.environ)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
