"""A front-end (`bot serve --model-server`) loads no weights and so must not load torch either
(about 300 MB of memory for nothing): importing everything the server and its routes need must
leave torch out. The topology test checks the running process; this catches an import that
pulls torch in within a second."""

from __future__ import annotations

import subprocess
import sys

SERVER_MODULES = ("bot.cli", "bot.serve.app", "bot.runtime.services", "bot.engine.frontend")


def test_the_server_and_its_routes_import_no_torch():
    loaded_torch = "sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3]"
    code = f"import sys; import {', '.join(SERVER_MODULES)}; print({loaded_torch})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the server loads torch ({out}): import it inside the function that needs weights"
