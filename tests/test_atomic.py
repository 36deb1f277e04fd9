"""bot/atomic.py: a write that fails leaves the old file or folder and nothing beside it."""

from __future__ import annotations

import pytest

from bot import atomic


def test_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "ACTIVE"
    atomic.write_text(path, "first\n")
    atomic.write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ACTIVE"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "state.pt"
    atomic.write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_write_folder_fills_a_new_or_empty_folder(tmp_path):
    assert atomic.write_folder(tmp_path / "new" / "adapter", lambda tmp: (tmp / "a.json").write_text("{}"))
    (tmp_path / "empty").mkdir()
    assert atomic.write_folder(tmp_path / "empty", lambda tmp: (tmp / "b.json").write_text("{}"))
    assert (tmp_path / "new" / "adapter" / "a.json").is_file() and (tmp_path / "empty" / "b.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_write_folder_leaves_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    assert not atomic.write_folder(tmp_path / "taken", lambda tmp: (tmp / "theirs.txt").write_text("x"))
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_a_failed_folder_write_leaves_nothing(tmp_path):
    def fail(tmp):
        (tmp / "part").write_text("half")
        raise RuntimeError("save failed")

    with pytest.raises(RuntimeError, match="save failed"):
        atomic.write_folder(tmp_path / "model", fail)
    assert list(tmp_path.iterdir()) == []
