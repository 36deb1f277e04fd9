"""Training: LoRA on a tiny random model (fast), and once on the real bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, make_tiny_project
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bot import models
from bot.base_model import load_model, load_tokenizer
from bot.cli import main
from bot.config import load_settings
from bot.errors import BaseModelUnavailable, InvalidFiles
from bot.pipelines.train import train_and_activate
from bot.rendering import IGNORE_INDEX, prompt_ids
from bot.training import recipe
from bot.training.batching import collate
from bot.training.loss import bot_token_loss, bot_token_nll


def train_project(folder: Path):
    return train_and_activate(load_settings(folder), progress_bar=False)


def greedy(model, tokenizer, n: int = 8) -> list[int]:
    ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": "Where is my order ES-1001?"}])])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, cache_dir):
    project = make_tiny_project(tmp_path_factory.mktemp("tiny"), tiny_base, cache_dir)
    outcome = train_project(project)
    return project, outcome.model


def test_lora_weights_change_and_base_weights_do_not(trained, tiny_base):
    project, model = trained
    adapter = load_file(model.adapter_dir / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # lora_B starts at zero
    original = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    settings = load_settings(project)
    peft_model = PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir), model.adapter_dir)
    base_after = peft_model.get_base_model().state_dict()
    for name, weight in original.items():
        wrapped = name.replace(".weight", ".base_layer.weight")  # the name LoRA gives a weight it wraps
        key = wrapped if wrapped in base_after else name
        assert torch.equal(base_after[key], weight), name


def training_loss(model, examples) -> float:
    with torch.no_grad():
        return bot_token_loss(model, collate(examples, examples[0].input_ids[-1])).item()


class FixedLogits:
    """A stand-in model: the same bf16 logits (as autocast gives them) whatever it is asked."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, *, input_ids, attention_mask, logits_to_keep):
        return SimpleNamespace(logits=self.logits[:, logits_to_keep])


def test_bot_token_loss_is_within_float_rounding_of_a_float64_reference():
    torch.manual_seed(0)
    rows, width, vocabulary = 2, 300, 49152  # the bundled model's vocabulary
    logits = (torch.randn(rows, width, vocabulary) * 3).to(torch.bfloat16)
    labels = torch.randint(0, vocabulary, (rows, width))
    labels[:, :100] = IGNORE_INDEX  # a prompt: not trained
    labels[1, 250:] = IGNORE_INDEX  # a shorter second row
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}
    nll, mask = bot_token_nll(FixedLogits(logits), batch)
    # Position i predicts token i+1; the loss keeps the positions some row trains on (99 to 298).
    reference = torch.nn.functional.cross_entropy(
        logits[:, 99:299].double().flatten(0, 1),
        labels[:, 100:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(rows, 200)
    assert mask.tolist() == (labels[:, 100:] != IGNORE_INDEX).tolist()
    assert (nll.double() - reference).abs().max() < 2e-5  # the (rows, vocabulary, positions) layout was 1.1e-4 off


def test_loss_falls_on_data_it_can_overfit(tmp_path, tiny_base, cache_dir):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=40, extra="  learning_rate: 2.0e-2\n")
    project.joinpath("config.yml").write_text(
        project.joinpath("config.yml").read_text().replace("  learning_rate: 5.0e-3\n", "")
    )
    # Something a tiny model can learn by heart: the bot always gives the same answer.
    turns = "    turns:\n      - user: {q}\n      - bot: Thanks, let me check that for you.\n"
    questions = ["Where is my order?", "Can I return a kettle?", "Do you ship to France?", "Is my parcel late?"]
    dialogues = "".join(f"  - id: d{i}\n" + turns.format(q=q) for i, q in enumerate(questions))
    (project / "training_data" / "dialogues" / "examples.yml").write_text("dialogues:\n" + dialogues)
    model = train_project(project).model
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    examples = recipe.load_examples(settings.build_dir / "train.jsonl", tokenizer, 512)
    before = training_loss(load_model(settings.base_model, settings.cache_dir), examples)
    after = training_loss(
        PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir), model.adapter_dir).eval(),
        examples,
    )
    assert before > 10  # a random model: about ln(49152) = 10.8 nats per token
    assert after < before / 2
    held_out = model.manifest["training"]["held_out_loss"]
    # Held-out bot turns differ: their loss falls at first, less, and then (40 epochs at a high
    # rate) may rise again as the model learns the training answer by heart.
    assert len(held_out) == 40 and min(held_out) < held_out[0]


def test_manifest_records_what_was_trained(trained):
    project, model = trained
    m = model.manifest
    assert m["base_model"] == str(load_settings(project).build.model.base)
    assert len(m["data_hash"]) == 16
    assert m["training"]["steps"] == 4 * 2  # 3 dialogues in batches of 2, 4 epochs
    assert m["training"]["tokens"] > 0 and m["training"]["device"] == "cpu"
    assert (model.tokenizer_dir / "tokenizer_config.json").is_file()
    assert models.active_id(project / "models") == model.id


def test_saved_adapter_generates_the_same_tokens_as_before_saving(tmp_path, tiny_base, cache_dir, monkeypatch):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=2)
    kept = {}
    real_train = recipe.train

    def keep_model(*args, **kwargs):
        result = real_train(*args, **kwargs)
        kept["model"] = result.model
        return result

    monkeypatch.setattr("bot.pipelines.train.train", keep_model)
    model = train_project(project).model
    tokenizer = load_tokenizer(str(tiny_base), cache_dir)
    before = greedy(kept["model"], tokenizer)
    reloaded = PeftModel.from_pretrained(load_model(str(tiny_base), cache_dir), model.adapter_dir)
    assert greedy(reloaded.eval(), tokenizer) == before


def test_same_seed_and_data_give_the_same_adapter(tmp_path, tiny_base, cache_dir):
    first = train_project(make_tiny_project(tmp_path / "a", tiny_base, cache_dir, epochs=2)).model
    second = train_project(make_tiny_project(tmp_path / "b", tiny_base, cache_dir, epochs=2)).model
    a = load_file(first.adapter_dir / "adapter_model.safetensors")
    b = load_file(second.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, tiny_base, cache_dir, monkeypatch, capsys):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=3)
    real_loss = recipe.bot_token_loss
    calls = {"n": 0}

    def interrupt_on_fifth_batch(*args, **kwargs):  # 2 training batches and 1 held-out batch per epoch
        calls["n"] += 1
        if calls["n"] == 5:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(recipe, "bot_token_loss", interrupt_on_fifth_batch)
    assert main(["-C", str(project), "train"]) == 1
    err = capsys.readouterr().err
    assert "training interrupted; checkpoint saved at step 3" in err, err[err.find("error") :]
    (run,) = [p for p in (project / "models").iterdir() if p.is_dir()]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 3
    assert not (run / "manifest.json").exists()

    monkeypatch.setattr(recipe, "bot_token_loss", real_loss)
    assert main(["-C", str(project), "train", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "epoch 2, step 3 of 6" in err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 6
    assert not (run / "checkpoint").exists()


def test_an_error_in_training_saves_a_checkpoint_and_surfaces_with_its_traceback(
    tmp_path, tiny_base, cache_dir, monkeypatch, capsys
):
    """Only Ctrl-C reads "interrupted": a bug in a training step is not turned into an
    interruption with its traceback gone; the checkpoint is saved all the same."""
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=3)
    real_loss = recipe.bot_token_loss
    calls = {"n": 0}

    def fail_on_fifth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("a bug in the loss")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(recipe, "bot_token_loss", fail_on_fifth_batch)
    with pytest.raises(RuntimeError, match="a bug in the loss") as raised:
        main(["-C", str(project), "train"])
    assert any(entry.name == "fail_on_fifth_batch" for entry in raised.traceback)
    err = capsys.readouterr().err
    assert "training stopped by RuntimeError; checkpoint saved at step 3" in err
    assert "interrupted" not in err
    (run,) = [p for p in (project / "models").iterdir() if p.is_dir()]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 3


def test_resume_without_an_interrupted_run_is_a_clear_error(tmp_path, tiny_base, cache_dir, capsys):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir)
    assert main(["-C", str(project), "train", "--resume"]) == 1
    assert "no interrupted training run" in capsys.readouterr().err


def test_progress_file_has_every_step_then_the_gates_verdict(tmp_path, tiny_base, cache_dir, capsys):
    project = make_tiny_project(tmp_path / "bot", tiny_base, cache_dir, epochs=2)
    progress = tmp_path / "progress.jsonl"
    assert main(["-C", str(project), "train", "--progress-file", str(progress)]) == 0
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    steps, (done,) = records[:-1], records[-1:]
    assert [r["event"] for r in steps] == ["step"] * len(steps)
    assert [r["step"] for r in steps] == list(range(len(steps))) and {r["steps"] for r in steps} == {len(steps) - 1}
    assert steps[0]["eta_s"] is None and steps[0]["loss"] is None  # before the first step
    assert all(r["eta_s"] >= 0 and isinstance(r["loss"], float) for r in steps[1:]) and steps[-1]["eta_s"] == 0
    model = models.active(load_settings(project).models_dir)
    assert done == {
        "event": "done",
        "model_id": model.id,
        "trained": True,
        "activated": True,
        "gate": {"passed": True, "summary": model.manifest["activation"]["reason"]},
    }
    assert "\r" not in capsys.readouterr().err  # the file replaces the progress bars

    assert main(["-C", str(project), "train", "--resume", "--progress-file", str(progress)]) == 1
    (failed,) = [json.loads(line) for line in progress.read_text().splitlines()]  # the file starts anew
    assert failed["event"] == "failed" and failed["error"].startswith("no interrupted training run")


def test_if_needed_skips_when_a_model_matches_the_data(trained, capsys):
    project, model = trained
    assert main(["-C", str(project), "train", "--if-needed"]) == 0
    assert f"model {model.id} already matches the training data" in capsys.readouterr().out


def test_models_list_activate_and_export(trained, tmp_path, capsys):
    project, model = trained
    assert main(["-C", str(project), "models", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["id", "created", "base"]
    assert any(row.startswith(model.id) and row.rstrip().endswith("*") for row in rows[1:])
    assert main(["-C", str(project), "models", "activate", "20990101-000000"]) == 1
    assert "no trained model '20990101-000000'" in capsys.readouterr().err
    assert main(["-C", str(project), "models", "activate", model.id]) == 0

    target = tmp_path / "merged"
    assert main(["-C", str(project), "models", "export", model.id, "--merged", str(target)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(target)
    assert not any("lora" in name for name in merged.state_dict())
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    adapter = PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir), model.adapter_dir).eval()
    assert greedy(merged.eval(), tokenizer) == greedy(adapter, tokenizer)


def test_unresolvable_model_id_says_how_to_make_it_available(tmp_path):
    with pytest.raises(BaseModelUnavailable, match="huggingface-cli download someone/missing-model"):
        load_tokenizer("someone/missing-model", tmp_path)


def test_two_process_accelerate_launch(tmp_path, tiny_base, cache_dir):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=2)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "bot",
        "-C",
        str(project),
        "train",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained ") == 1  # only the main process reports
    (manifest,) = (project / "models").glob("*/manifest.json")
    training = json.loads(manifest.read_text())["training"]
    assert training["processes"] == 2
    assert training["steps"] == 2  # 2 batches per epoch shared by 2 processes: 1 step each epoch


def test_fine_tunes_the_real_bundled_model(tmp_path, cache_dir):
    project = make_tiny_project(tmp_path, "bundled", cache_dir, epochs=1, extra="  batch_size: 1\n")
    config = (project / "config.yml").read_text().replace("  batch_size: 2\n", "")
    (project / "config.yml").write_text(config)
    model = train_project(project).model
    assert model.manifest["training"]["steps"] == 3
    settings = load_settings(project)
    tokenizer = load_tokenizer("bundled", cache_dir)
    peft_model = PeftModel.from_pretrained(load_model("bundled", cache_dir), model.adapter_dir).eval()
    tokens = greedy(peft_model, tokenizer, n=6)
    assert len(tokens) == 6 and settings.base_model == "bundled"

    # ...and the evaluation stage, all four modes, with the real model.
    config = (project / "config.yml").read_text() + "eval:\n  max_new_tokens: 24\n"
    (project / "config.yml").write_text(config)
    assert main(["-C", str(project), "eval"]) == 0
    report = json.loads((project / "results" / model.id / "report.json").read_text())
    assert set(report["summary"]) == {"zero-shot", "one-shot", "few-shot", "fine-tuned"}
    assert all(s["turns"] == 2 and s["loss"] > 0 for s in report["summary"].values())


def test_data_broken_while_training_keeps_the_model_and_says_what_next(tmp_path, tiny_base, cache_dir):
    """A support team edits the held-out tests while the model trains and leaves a typo: the
    gate can't read them, the trained model stays saved (not active), and the error says how to
    evaluate and activate it once the file is fixed."""
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=1)
    held_out = project / "training_data" / "tests" / "examples.yml"

    def edit_mid_training(progress) -> None:
        if progress.step == 1:
            held_out.write_text(held_out.read_text().replace("action: check_order", "action: chek_order", 1))

    with pytest.raises(InvalidFiles) as failed:
        train_and_activate(load_settings(project), progress_bar=False, on_step=edit_mid_training)
    settings = load_settings(project)
    [saved] = models.trained_models(settings.models_dir)
    assert models.active_id(settings.models_dir) is None
    assert "unknown action 'chek_order'" in failed.value.problems[0].message
    assert f"model {saved.id} is trained and saved" in failed.value.then
    assert f"'bot models activate {saved.id}'" in failed.value.then
