"""`bot data validate` on a golden set of broken projects: one folder per kind of error under
tests/golden/, each with the exact messages expected in expected.txt.

To review a changed message, run: python tests/test_validate_golden.py CASE
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bot.cli import main

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and not p.name.startswith("_"))


def build_project(case: str, target: Path, cache_dir: Path) -> Path:
    shutil.copytree(GOLDEN / "_base", target)
    config = target / "config.yml"
    config.write_text(config.read_text() + f"  cache_dir: {cache_dir}\n")
    if (GOLDEN / case / "training_data").is_dir():
        shutil.copytree(GOLDEN / case / "training_data", target / "training_data", dirs_exist_ok=True)
    if case == "oversized_file":
        dialogues = target / "training_data" / "dialogues"
        dialogues.mkdir(parents=True)
        turn = "      - user: where is my order?\n      - bot: Let me check that for you.\n"
        (dialogues / "huge.yml").write_text("dialogues:\n  - id: huge\n    turns:\n" + turn * 15_000)
    return target


def run_validate(project: Path, capsys) -> tuple[int, str]:
    code = main(["-C", str(project), "data", "validate"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case, tmp_path, capsys, cache_dir):
    project = build_project(case, tmp_path / "project", cache_dir)
    code, out = run_validate(project, capsys)
    expected = (GOLDEN / case / "expected.txt").read_text(encoding="utf-8")
    assert out == expected
    assert code == 1


def test_base_project_is_valid(tmp_path, capsys, cache_dir):
    shutil.copytree(GOLDEN / "_base", tmp_path / "p")
    (tmp_path / "p" / "training_data" / "dialogues").mkdir()
    (tmp_path / "p" / "training_data" / "dialogues" / "ok.yml").write_text(
        "dialogues:\n  - id: ok\n    turns:\n      - user: 'no'\n      - bot: Okay!\n"
    )
    code, out = run_validate(tmp_path / "p", capsys)
    assert code == 0, out
    assert out.startswith("ok: 1 training and 0 held-out dialogues")


if __name__ == "__main__":  # print a case's current output, to review before updating expected.txt
    import tempfile

    for case in sys.argv[1:] or CASES:
        with tempfile.TemporaryDirectory() as tmp:
            project = build_project(
                case, Path(tmp) / "project", Path(__file__).parent.parent / ".cache" / "test-models"
            )
            print(f"== {case}")
            main(["-C", str(project), "data", "validate"])
