"""`bot init DIR`: a new bot project that validates as it is."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.errors import ProjectExists

TEMPLATE = Path(__file__).parent / "templates" / "project"


def create_project(folder: Path) -> Path:
    """Copy the example project into `folder`; refuses to overwrite any file."""
    template_files = [p.relative_to(TEMPLATE) for p in TEMPLATE.rglob("*") if p.is_file()]
    clashes = [p for p in template_files if (folder / p).exists()]
    if clashes:
        raise ProjectExists(f"{folder / clashes[0]} already exists: choose a new or empty folder")
    shutil.copytree(TEMPLATE, folder, dirs_exist_ok=True)
    return folder
