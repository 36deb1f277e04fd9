"""`bot tune`, `bot train --config` and token-budget batches, on the tiny random model."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_project

from bot.cli import main
from bot.config import TrainConfig, apply_overlay, load_settings
from bot.errors import InvalidFiles
from bot.pipelines.tune import Candidate, TuneError, load_grid, rank, validation_split
from bot.pipelines.tune_report import render_tune_html
from bot.training.batching import LengthGroupedBatches, TokenBudgetBatches, batch_sampler

# --- what the tune opens ---------------------------------------------------------------------

_opened: list[str] | None = None  # while a test records: every path opened or listed


def _audit(event: str, args: tuple) -> None:
    if _opened is None or event not in ("open", "os.listdir", "os.scandir"):
        return
    if args and isinstance(args[0], (str, bytes, Path)):
        path = args[0]
        _opened.append(str(path if not isinstance(path, bytes) else path.decode(errors="replace")))


sys.addaudithook(_audit)  # audit hooks can't be removed: it records only while _opened is a list


@pytest.fixture
def record_opened():
    """record_opened() -> the list of paths opened or listed from then on, until the test ends."""

    def start() -> list[str]:
        global _opened
        _opened = []
        return _opened

    yield start
    globals()["_opened"] = None


GRID = "learning_rate: [1.0e-4, 2.0e-2]\nlora:\n  rank: [4]\n"


def test_tune_picks_the_best_writes_its_settings_and_report_and_never_reads_tests(
    tmp_path, tiny_base, cache_dir, record_opened, capsys
):
    project = make_tiny_project(tmp_path / "project", tiny_base, cache_dir, epochs=2)
    tests = project / "training_data" / "tests"
    (tests / "poisoned.yml").write_text("dialogues: [this is not YAML\n")  # reading it would fail the run
    grid = tmp_path / "grid.yml"
    grid.write_text(GRID)

    opened = record_opened()
    assert main(["-C", str(project), "tune", "--grid", str(grid), "--reduced"]) == 0
    out = capsys.readouterr().out
    globals()["_opened"] = None

    assert not [p for p in opened if Path(p).resolve().is_relative_to(tests.resolve())]
    assert opened  # the hook did record the run's own files
    assert not (project / "models").exists() and not (project / "build").exists()  # trained in a temporary folder

    (folder,) = (project / "results" / "tune").iterdir()
    document = json.loads((folder / "tune.json").read_text())
    candidates = document["candidates"]
    assert [c["settings"] for c in sorted(candidates, key=lambda c: c["number"])] == [
        {"learning_rate": 1.0e-4, "lora.rank": 4},
        {"learning_rate": 2.0e-2, "lora.rank": 4},
    ]
    # --reduced: every candidate trains 1 epoch (config.yml says 2): 2 dialogues in 1 batch of 2, 1 step
    assert document["mode"] == "reduced" and document["fixed"] == {"epochs": 1}
    assert all(c["train_seconds"] > 0 and c["steps"] == 1 and c["scores"]["turns"] > 0 for c in candidates)
    assert all(c["validation_loss"] > 0 for c in candidates)
    # the validation split is carved from the training dialogues and left out of training
    data = document["data"]
    assert len(data["validation_dialogues"]) == 1 and len(data["training_dialogues"]) == 2
    assert set(data["validation_dialogues"]).isdisjoint(data["training_dialogues"])
    assert set(data["validation_dialogues"] + data["training_dialogues"]) == {
        "order-status",
        "order-missing-number",
        "refund-request",
    }

    # best first, by the ranking rule, recomputed here from the recorded scores
    def key(c):
        s = c["scores"]
        return (-s["action_accuracy"], -s["expectation_pass_rate"], -s["chrf"], c["number"])

    assert [c["number"] for c in candidates] == [c["number"] for c in sorted(candidates, key=key)]
    assert [c["rank"] for c in candidates] == [1, 2]
    best = candidates[0]["settings"]

    tuned = project / "tuned.yml"
    written = yaml.safe_load(tuned.read_text())
    assert written == {"train": {"learning_rate": best["learning_rate"], "lora": {"rank": 4}}}
    applied = apply_overlay(load_settings(project), tuned).build.train
    assert applied.learning_rate == best["learning_rate"] and applied.lora.rank == 4
    assert applied.lora.alpha == 16 and applied.epochs == 2  # the rest, epochs included, stays as config.yml says

    report = (folder / "report.html").read_text()
    assert report.startswith("<!doctype html>") and "<script" not in report and "<link" not in report
    assert f"<td>{best['learning_rate']}</td>" in report
    assert f"train --config {os.path.relpath(tuned)}" in out
    table = out[out.index("rank  #") :].splitlines()
    assert table[0].split()[:4] == ["rank", "#", "learning_rate", "lora.rank"]
    assert table[2].split()[:2] == ["1", str(candidates[0]["number"])]


def test_report_escapes_every_string():
    document = {
        "created": "2026-01-01T00:00:00Z",
        "mode": "full",
        "grid_source": "<script>alert(1)</script>.yml",
        "grid": {"learning_rate": [0.001]},
        "fixed": {},
        "ranking": "action accuracy",
        "base_model": "<b>m</b>",
        "device": "cpu",
        "seconds": 1.0,
        "tuned_file": "a&b.yml",
        "report": "r.html",
        "data": {
            "validation_share": 0.15,
            "training_dialogues": ["a"],
            "validation_dialogues": ["<i>v</i>"],
            "validation_turns": 1,
        },
        "candidates": [
            {
                "rank": 1,
                "number": 1,
                "settings": {"learning_rate": 0.001},
                "validation_loss": None,
                "train_seconds": 1,
                "score_seconds": 1,
                "scores": {
                    "action_accuracy": 1.0,
                    "expectation_pass_rate": 0.5,
                    "chrf": 10.0,
                    "handoff_accuracy": 1.0,
                    "leaks": 0,
                },
            }
        ],
    }
    page = render_tune_html(document)
    assert "<script>" not in page and "<b>m</b>" not in page and "<i>v</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.yml" in page and "a&amp;b.yml" in page


def test_ranking_is_action_accuracy_then_expectations_then_chrf():
    def candidate(n, action, expect, chrf):
        return Candidate(n, {}, {"action_accuracy": action, "expectation_pass_rate": expect, "chrf": chrf})

    ranked = rank(
        [
            candidate(1, 0.5, 1.0, 90),
            candidate(2, 0.6, 0.0, 10),
            candidate(3, 0.6, 0.5, 5),
            candidate(4, 0.6, 0.5, 7),
            candidate(5, 0.6, 0.5, 7),
        ]
    )
    assert [c.number for c in ranked] == [4, 5, 3, 2, 1]
    assert [c.rank for c in ranked] == [1, 2, 3, 4, 5]


class _Dialogue:
    def __init__(self, id):
        self.id = id


def test_validation_split_is_deterministic_at_least_one_and_disjoint():
    dialogues = [_Dialogue(f"d{i}") for i in range(40)]
    training, validation = validation_split(dialogues)
    assert len(validation) == 6 and len(training) == 34  # 15% of 40
    assert {d.id for d in training}.isdisjoint(d.id for d in validation)
    shuffled = dialogues[:]
    random.Random(1).shuffle(shuffled)
    assert {d.id for d in validation_split(shuffled)[1]} == {d.id for d in validation}  # not file order
    # adding a dialogue moves at most one out of the split
    grown = {d.id for d in validation_split(dialogues + [_Dialogue("new")])[1]}
    assert len(grown - {d.id for d in validation}) <= 1
    assert len(validation_split(dialogues[:2])[1]) == 1 and len(validation_split(dialogues[:3])[0]) == 2
    with pytest.raises(TuneError, match="at least 2 training dialogues"):
        validation_split(dialogues[:1])


def test_grid_file_problems_name_the_file_line_and_key(tmp_path):
    grid = tmp_path / "grid.yml"
    grid.write_text(
        "learning_rat: [0.001]\nlora.rank: [8, eight]\nepochs: 3\nmodels_dir: [a]\nlora:\n  top_layers: [0, null]\n"
    )
    with pytest.raises(InvalidFiles) as e:
        load_grid(grid, "grid.yml")
    assert [str(p) for p in e.value.problems] == [
        "grid.yml:1:1: error: unknown setting 'learning_rat' (did you mean 'learning_rate'?): "
        "a grid key is a train setting such as 'learning_rate' or 'lora.rank'",
        "grid.yml:2:16: error: 'rank' must be a whole number, not text",
        "grid.yml:3:9: error: 'epochs' must be a list of values to try, such as [2, 3]",
        "grid.yml:4:1: error: 'models_dir' is not searched by bot tune: set it in config.yml",
        "grid.yml:6:16: error: 'top_layers' input should be greater than 0",
    ]
    grid.write_text("lora.top_layers: [16, null]\nepochs: [1, 2]\n")
    loaded = load_grid(grid, "grid.yml")
    assert loaded.candidates() == [
        {"lora.top_layers": 16, "epochs": 1},
        {"lora.top_layers": 16, "epochs": 2},
        {"lora.top_layers": None, "epochs": 1},
        {"lora.top_layers": None, "epochs": 2},
    ]


# --- bot train --config ----------------------------------------------------------------------


def test_train_config_applies_the_overlay(tmp_path, tiny_base, cache_dir, capsys):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=1)
    overlay = tmp_path / "tuned.yml"
    overlay.write_text("train:\n  learning_rate: 2.0e-3\n  epochs: 2\n  lora:\n    rank: 4\n")
    assert main(["-C", str(project), "train", "--config", str(overlay)]) == 0
    (manifest,) = (project / "models").glob("*/manifest.json")
    recorded = json.loads(manifest.read_text())
    train = recorded["config"]["train"]
    assert train["learning_rate"] == 2.0e-3 and train["epochs"] == 2 and train["lora"]["rank"] == 4
    assert train["lora"]["alpha"] == 16 and train["warmup_ratio"] == 0.0  # deep-merged: config.yml's others stay
    assert recorded["training"]["epochs"] == 2 and recorded["training"]["steps"] == 4  # 3 dialogues, batch 2


def test_train_config_rejects_unknown_keys_and_other_sections(tmp_path, tiny_base, cache_dir, capsys):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir)
    overlay = tmp_path / "bad.yml"
    overlay.write_text("train:\n  lora:\n    rnak: 8\n  epochs: two\nserve:\n  port: 1\n")
    assert main(["-C", str(project), "train", "--config", str(overlay)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{overlay}:3:5: error: unknown key 'rnak' (did you mean 'rank'?)",
        f"{overlay}:4:11: error: 'epochs' must be a whole number, not text",
        f"{overlay}:5:1: error: only the 'train' section can be applied with --config, not 'serve': "
        f"put other settings in config.yml",
        "3 errors in 1 file",
    ]
    assert not (project / "models").exists()  # nothing trained

    assert main(["-C", str(project), "train", "--config", str(tmp_path / "missing.yml")]) == 1
    assert "missing.yml: no such file" in capsys.readouterr().err


# --- tokens_per_batch ------------------------------------------------------------------------


def test_token_budget_batches_respect_the_budget_and_cover_every_example_once():
    rng = random.Random(0)
    lengths = [rng.randint(20, 900) for _ in range(300)] + [1500]  # one longer than the budget
    budget = 1024
    sampler = TokenBudgetBatches(lengths, budget, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each example exactly once
        for b in batches:
            assert len(b) * max(lengths[i] for i in b) <= budget or len(b) == 1
    batches_of_1500 = [b for b in sampler.batches if lengths[b[0]] == 1500]
    assert [1500 == lengths[b[0]] for b in sampler.batches].count(True) == 1 and batches_of_1500 == [[300]]
    # packed: each batch takes as many as fit, so the next sequence would have broken the budget
    for b, after in zip(sampler.batches, sampler.batches[1:], strict=False):
        assert (len(b) + 1) * lengths[after[0]] > budget
    # short ones go many to a batch
    assert min(len(b) for b in sampler.batches[:5]) > max(len(b) for b in sampler.batches[-5:])
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # batch order reshuffled per epoch


def test_token_budget_applies_on_cuda_only():
    lengths = [100, 120, 300, 310, 320, 900]
    cfg = TrainConfig(batch_size=2, tokens_per_batch=700)
    on_cuda = batch_sampler(lengths, cfg, cuda=True)
    on_cpu = batch_sampler(lengths, cfg, cuda=False)
    assert isinstance(on_cuda, TokenBudgetBatches) and on_cuda.batches == [[0, 1], [2, 3], [4], [5]]
    assert type(on_cpu) is LengthGroupedBatches and on_cpu.batches == [[0, 1], [2, 3], [4, 5]]
    assert type(batch_sampler(lengths, TrainConfig(batch_size=2), cuda=True)) is LengthGroupedBatches
