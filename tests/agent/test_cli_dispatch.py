"""``tailbucket agent`` is dispatched before anything of the server is imported (memory: ~7 MiB)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO

PROBE = """
import json, sys
from server import cli
try:
    cli.main(["agent", "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "server")))
"""


def test_the_agent_command_imports_no_server_module() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == ["server", "server.cli"]
