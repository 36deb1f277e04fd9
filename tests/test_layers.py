"""The package's layers hold where it matters to users: making drafts of training data, which
`bot data export` and the console do, loads neither the web server's libraries nor torch."""

from __future__ import annotations

import subprocess
import sys


def test_drafts_load_no_web_server_and_no_torch():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bot.pipelines.drafts; print(sorted({m.split('.')[0] for m in sys.modules}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'bot'" in loaded
    assert "'aiohttp'" not in loaded
    assert "'torch'" not in loaded
