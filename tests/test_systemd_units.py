"""The unit files in systemd/: valid, and hardened (exposure score <= 2.5)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
NAMES = ["tailbucket-server.service", "tailbucket-agent.service"]
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or SYSTEM_UNITS is None, reason="systemd-analyze is not installed"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A root holding what the units reference: the program, kill, and systemd's own units."""
    root = tmp_path_factory.mktemp("root")
    program = root / "opt/tailbucket/bin/tailbucket"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
    return root


def test_units_verify(root):
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *NAMES], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tailbucket" not in result.stderr  # no warnings about our units


@pytest.mark.parametrize("name", NAMES)
def test_units_are_hardened(name):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNITS / name)],
                            capture_output=True, text=True)
    match = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


@pytest.mark.parametrize("name", NAMES)
def test_units_follow_the_deployment_contract(name):
    text = (UNITS / name).read_text()
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M) and re.search(r"^StateDirectory=\S+$", text, re.M)
    assert "/etc/tailbucket/" in text
