"""`bot data compile` on the shipped starter data, and the data itself."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, write_config
from openai_format import check_jsonl

from bot.cli import main
from bot.config import load_settings
from bot.data.project import validate


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, cache_dir):
    project = tmp_path_factory.mktemp("starter")
    shutil.copytree(ROOT / "training_data", project / "training_data")
    write_config(project, cache_dir)
    assert main(["-C", str(project), "data", "compile"]) == 0
    return project


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compiled_jsonl_passes_the_openai_format_checks(compiled):
    for name in ("train.jsonl", "test.jsonl"):
        text = (compiled / "build" / name).read_text()
        assert check_jsonl(text) == [], name


def test_the_checker_catches_what_openai_rejects():
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]})
    assert check_jsonl(good, min_examples=1) == []
    assert check_jsonl("[1]", min_examples=1) == ["line 1: not an object"]
    assert check_jsonl('{"messages": [{"role": "user", "content": "hi"}]}', min_examples=1) == [
        "line 1: no assistant message"
    ]
    assert check_jsonl(
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}', min_examples=1
    ) == ["line 1 message 0: unknown role 'robot'"]
    assert "1 examples; at least 10 are required" in check_jsonl(good)


def test_actions_become_tool_calls_with_results_and_handoffs_a_tool(compiled):
    train = lines(compiled / "build" / "train.jsonl")
    tool_names = {t["function"]["name"] for t in train[0]["tools"]}
    assert {"verify_customer", "check_order", "handoff_to_human"} <= tool_names
    calls = [c["function"]["name"] for e in train for m in e["messages"] for c in m.get("tool_calls", [])]
    assert calls.count("handoff_to_human") >= 10
    assert len(calls) - calls.count("handoff_to_human") >= 60
    # Every action call is answered by a tool message, and the system prompt comes from the persona.
    for e in train:
        messages = e["messages"]
        assert messages[0]["role"] == "system" and "Wren" in messages[0]["content"]
        for i, m in enumerate(messages):
            for c in m.get("tool_calls", []):
                if c["function"]["name"] != "handoff_to_human":
                    assert messages[i + 1] == {**messages[i + 1], "role": "tool", "tool_call_id": c["id"]}


def test_bot_turns_not_to_train_get_weight_zero(compiled):
    train = lines(compiled / "build" / "train.jsonl")
    weights = Counter(m["weight"] for e in train for m in e["messages"] if m["role"] == "assistant")
    assert weights[0] >= 10 and weights[1] > 300


def test_index_records_hash_ids_and_expectations(compiled):
    index = json.loads((compiled / "build" / "index.json").read_text())
    assert len(index["data_hash"]) == 16
    assert len(index["train"]) == len(lines(compiled / "build" / "train.jsonl"))
    assert all(t["expect"] is not None for t in index["test"])


def test_compiling_twice_gives_the_same_hash(compiled, capsys):
    first = json.loads((compiled / "build" / "index.json").read_text())["data_hash"]
    assert main(["-C", str(compiled), "data", "compile"]) == 0
    assert json.loads((compiled / "build" / "index.json").read_text())["data_hash"] == first
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "set",
        "tag",
        "dialogues",
        "turns",
        "trained",
        "turns",
        "tokens",
        "trained",
        "tokens",
    ]
    assert any(line.startswith("train  (all)") for line in out.splitlines())
    assert f"data hash {first}" in out


def test_starter_data_meets_the_brief(cache_dir):
    data = validate(load_settings(ROOT))
    train, test = data.train, data.test
    ordinary = [d for d in train if not d.adversarial]
    topics = {
        "billing",
        "plans",
        "cancellation",
        "moving",
        "orders",
        "returns",
        "roaming",
        "sim",
        "outages",
        "tech-support",
        "security",
    }
    assert len(ordinary) >= 80
    assert len({t for d in ordinary for t in d.tags} & topics) >= 8
    assert sum(d.adversarial for d in train) >= 25
    assert len(test) >= 20 and sum(d.adversarial for d in test) >= 8
    assert all(d.expect is not None for d in test)

    # Held-out dialogues duplicate no training dialogue.
    def turns(d):
        return tuple(t.model_dump_json() for t in d.turns)

    assert not {turns(d) for d in train} & {turns(d) for d in test}
    assert not {d.id for d in train} & {d.id for d in test}
    for d in ordinary:
        exchanges = sum(1 for t in d.turns if type(t).__name__ == "UserTurn")
        # a details-first rewrite (bot data augment) may be one message that says it all
        assert (1 if "augmented" in d.tags else 2) <= exchanges <= 6, d.id


def test_stats_prints_the_table_and_writes_nothing(tmp_path, capsys, cache_dir):
    shutil.copytree(ROOT / "bot" / "templates" / "project" / "training_data", tmp_path / "training_data")
    write_config(tmp_path, cache_dir)
    assert main(["-C", str(tmp_path), "data", "stats"]) == 0
    rows = {tuple(line.split()[:3]) for line in capsys.readouterr().out.splitlines()}
    assert {
        ("train", "(all)", "3"),
        ("train", "orders", "2"),
        ("train", "returns", "1"),
        ("test", "(all)", "1"),
    } <= rows
    assert not (tmp_path / "build").exists()


def test_stats_says_how_many_sequences_the_split_dialogues_make(tmp_path, capsys, cache_dir):
    shutil.copytree(ROOT / "bot" / "templates" / "project" / "training_data", tmp_path / "training_data")
    # one training dialogue is longer, none of its exchanges
    write_config(tmp_path, cache_dir, extra="  max_length: 270\n")
    assert main(["-C", str(tmp_path), "data", "stats"]) == 0
    out = capsys.readouterr().out
    assert (
        "(train: 3 dialogue(s) make 4 sequences: a dialogue longer than model.max_length is split at user turns)"
        in out
    )
    assert "(test:" not in out  # its one dialogue fits
