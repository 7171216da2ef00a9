"""CLI behaviour that the other tests do not reach: config errors end the command with status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["serve", "compare"])
def test_config_error_exits_2_naming_file_and_key(command, tmp_path):
    # A path longer than a console line: rich would break it at the width (80 in a pipe).
    folder = tmp_path / ("a-folder-with-a-long-name-" * 4)
    folder.mkdir()
    path = folder / "bad.yaml"
    path.write_text("server: {port: 8000, '[bold]prot': 1}\nmodels: []\n")
    result = subprocess.run([sys.executable, "-m", "hotswap.cli", command, "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config error" in result.stderr
    # On one line, and the key as written (not read as rich markup).
    assert f"{path}: server.[bold]prot: Extra inputs are not permitted" in result.stderr
