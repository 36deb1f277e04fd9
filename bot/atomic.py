"""Writing files and folders so that a reader never sees half of one: everything is written
beside the target under a name of its own, then renamed into place (a rename within a folder is
atomic). The temporary names are unique to the process, as several may write at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_folder(folder: Path, write: Callable[[Path], None]) -> bool:
    """`write(tmp)` fills a new folder beside `folder`, which is then renamed to `folder` (an
    empty `folder` is replaced). False, with nothing written, when `folder` is not empty by then:
    another process finished first, or something else is there."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        try:
            if folder.is_dir():
                folder.rmdir()  # only when empty
            tmp.rename(folder)
        except OSError:
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
