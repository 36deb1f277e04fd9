"""`bot init` scaffolds a project that validates, and never overwrites one."""

from __future__ import annotations

from conftest import write_config

from bot.cli import main


def test_init_output_validates_and_compiles(tmp_path, capsys, cache_dir):
    target = tmp_path / "newbot"
    assert main(["init", str(target)]) == 0
    assert (target / "training_data" / "persona.yml").is_file()
    write_config(target, cache_dir)
    assert main(["-C", str(target), "data", "validate"]) == 0
    assert (
        "ok: 3 training and 1 held-out dialogues, 2 conversation tests, 1 actions, no problems"
        in capsys.readouterr().out
    )
    assert main(["-C", str(target), "data", "compile"]) == 0
    assert (target / "build" / "train.jsonl").read_text().count("\n") == 3


def test_init_refuses_an_existing_project(tmp_path, capsys):
    assert main(["init", str(tmp_path)]) == 0
    (tmp_path / "config.yml").write_text("# mine\n")
    assert main(["init", str(tmp_path)]) == 1
    assert "config.yml already exists" in capsys.readouterr().err
    assert (tmp_path / "config.yml").read_text() == "# mine\n"


def test_missing_persona_is_reported(tmp_path, capsys, cache_dir):
    (tmp_path / "training_data" / "dialogues").mkdir(parents=True)
    write_config(tmp_path, cache_dir)
    assert main(["-C", str(tmp_path), "data", "validate"]) == 1
    out = capsys.readouterr().out
    assert "training_data/persona.yml:1:1: error: missing: every bot needs a persona" in out
