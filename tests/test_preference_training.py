"""The preference stage of training (KTO and DPO) on the tiny random model: the losses are
TRL's, the reference is the fine-tuned model and stays what it was, one step moves the
policy's log-probabilities the right way, and `bot train` keeps the fine-tuned model when the
preference-tuned one loses to it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_project
from peft import PeftModel

from bot import models
from bot.base_model import load_model, load_tokenizer
from bot.config import PreferenceConfig, load_settings
from bot.data.compiler import PREFERENCES_FILE
from bot.evaluation.gate import no_worse
from bot.pipelines.train import train_and_activate
from bot.precision import choose_precision
from bot.training.batching import collate
from bot.training.loss import dpo_loss, kto_loss, reply_logps
from bot.training.preference import PreferenceStage, load_preference_rows, mismatched

# -- the losses against TRL's code, in float64 -------------------------------------------------------


def trl_dpo(chosen, rejected, ref_chosen, ref_rejected, beta):
    """trl/trainer/dpo_trainer.py (1.16), loss_type "sigmoid": chosen_logratios = chosen -
    ref_chosen; rejected_logratios = rejected - ref_rejected; delta_score = chosen_logratios -
    rejected_logratios; per_sequence_loss = -F.logsigmoid(beta * delta_score)."""
    out = []
    for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected, strict=True):
        delta = (c - rc) - (r - rr)
        out.append(-math.log(1 / (1 + math.exp(-beta * delta))))
    return out


def trl_kto(logps, ref, labels, kl_logps, ref_kl, beta, dw, uw):
    """trl/trainer/kto_trainer.py (1.16), loss_type "kto": kl = (KL_logps - ref_KL_logps).mean()
    clamped at 0; chosen_losses = 1 - sigmoid(beta * (chosen_logratios - kl)); rejected_losses =
    1 - sigmoid(beta * (kl - rejected_logratios)); losses = cat(dw * chosen, uw * rejected)."""
    kl = max(0.0, sum(a - b for a, b in zip(kl_logps, ref_kl, strict=True)) / len(kl_logps))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    chosen = [dw * (1 - sigmoid(beta * ((p - r) - kl))) for p, r, y in zip(logps, ref, labels, strict=True) if y]
    rejected = [uw * (1 - sigmoid(beta * (kl - (p - r)))) for p, r, y in zip(logps, ref, labels, strict=True) if not y]
    return chosen + rejected


def test_dpo_and_kto_losses_are_trls_within_1e_5():
    torch.manual_seed(0)
    values = [(torch.randn(6) * 30 - 60) for _ in range(6)]
    chosen, rejected, ref_chosen, ref_rejected, kl, ref_kl = values
    ours = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
    theirs = trl_dpo(*(v.double().tolist() for v in (chosen, rejected, ref_chosen, ref_rejected)), 0.1)
    assert max(abs(a - b) for a, b in zip(ours.tolist(), theirs, strict=True)) < 1e-5
    labels = torch.tensor([True, False, True, True, False, False])
    for kl_shift in (0.0, 5.0):  # the KL estimate clamped at 0, and not
        ours = kto_loss(chosen, ref_chosen, labels, kl + kl_shift, ref_kl, beta=0.1, desirable_weight=1.5)
        lists = (v.double().tolist() for v in (chosen, ref_chosen, labels, kl + kl_shift, ref_kl))
        theirs = trl_kto(*lists, 0.1, 1.5, 1.0)
        assert max(abs(a - b) for a, b in zip(ours.tolist(), theirs, strict=True)) < 1e-5


# -- the stage on the tiny model ------------------------------------------------------------------

CONTEXT = "    turns:\n      - user: {q}\n"


def preference_file(rows: list[tuple[str, str, str]]) -> str:
    """rows: (question, reply, 'up' | 'down' | a rejected reply)."""
    out = ["preferences:"]
    for n, (question, reply, label) in enumerate(rows):
        kind = f"rating: {label}" if label in ("up", "down") else f'rejected: "{label}"'
        out += [f"  - id: p{n}", f"    {kind}", CONTEXT.format(q=question).rstrip("\n"), f'      - bot: "{reply}"']
    return "\n".join(out) + "\n"


GOOD, BAD = "Let me check that order for you.", "No."
RATED = [
    ("Where is my order?", GOOD, "up"),
    ("Has my parcel left?", BAD, "down"),
    ("Is my order late?", GOOD, "up"),
    ("When will it arrive?", BAD, "down"),
]
PAIRS = [(q, GOOD, BAD) for q in ("Where is my order?", "Has my parcel left?", "Is my order late?", "Any news?")]


def tiny_project(tmp_path, tiny_base, cache_dir, rows, preference: str):
    project = make_tiny_project(tmp_path / "bot", tiny_base, cache_dir, epochs=1)
    folder = project / "training_data" / "preferences"
    folder.mkdir()
    (folder / "rated.yml").write_text(preference_file(rows))
    with (project / "config.yml").open("a") as config:
        config.write(f"  preference: {preference}\n")
    return project


def test_compile_writes_the_reviewed_rows_with_only_the_reply_trained(tmp_path, tiny_base, cache_dir):
    project = tiny_project(tmp_path, tiny_base, cache_dir, RATED + PAIRS, "{enabled: true}")
    draft = project / "training_data" / "preferences" / "draft.yml"
    draft.write_text(
        preference_file(RATED).replace("  - id: p", "  - id: d").replace("    rating", "    draft: true\n    rating")
    )
    from bot.data.project import compile_data

    compile_data(load_settings(project))
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    kto = load_preference_rows(settings.build_dir / PREFERENCES_FILE, tokenizer, 512, "kto")
    dpo = load_preference_rows(settings.build_dir / PREFERENCES_FILE, tokenizer, 512, "dpo")
    assert kto.ids == ["p0", "p1", "p2", "p3"] and kto.desirable == [True, False, True, False]  # drafts left out
    assert dpo.ids == ["p4", "p5", "p6", "p7"]
    for example, reply in [(kto.chosen[0], GOOD), (kto.chosen[1], BAD), (dpo.rejected[0], BAD), (dpo.chosen[0], GOOD)]:
        trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
        assert tokenizer.decode(trained).startswith(reply)
    kl = mismatched(kto, [0, 1])  # row 0's question, row 1's reply
    text = tokenizer.decode(kl[0].input_ids)
    assert "Where is my order?" in text and text.rstrip().endswith(BAD + "<|im_end|>")


def logps_of(model, examples, tokenizer) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return reply_logps(model, collate(examples, tokenizer.pad_token_id)).double()


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_one_step_moves_the_policy_the_right_way_and_the_reference_stays(tmp_path, tiny_base, cache_dir, method):
    from accelerate import Accelerator

    rows = RATED if method == "kto" else PAIRS
    project = tiny_project(tmp_path, tiny_base, cache_dir, rows, "{enabled: true}")
    from bot.data.project import compile_data

    compile_data(load_settings(project))
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    data = load_preference_rows(settings.build_dir / PREFERENCES_FILE, tokenizer, 512, method)
    from bot.training.recipe import add_lora

    torch.manual_seed(0)
    model = add_lora(load_model(settings.base_model, settings.cache_dir), settings.build.train.lora)
    with torch.no_grad():  # a fine-tuned adapter, not a zero one, as the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_chosen = logps_of(model, data.chosen, tokenizer)
    before_rejected = logps_of(model, data.rejected if method == "dpo" else data.chosen, tokenizer)
    cfg = PreferenceConfig(enabled=True, method=method, learning_rate=5e-3, batch_size=4, epochs=1, beta=0.1)
    # the precision training takes here: accelerate keeps one state per process
    precision = "bf16" if choose_precision("auto", cuda=False) == "bf16" else "no"
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    stage = PreferenceStage(model, accelerator, tokenizer, data, cfg, seed=0, progress_bar=False)
    reference = stage._reference()
    stats = stage.run(tmp_path / "checkpoint")
    assert stats["steps"] == 1 and stats["method"] == method
    after_chosen = logps_of(model, data.chosen, tokenizer)
    if method == "kto":
        up = torch.tensor(data.desirable)
        assert (after_chosen - before_chosen)[up].min() > 0  # rated up: more likely
        assert (after_chosen - before_chosen)[~up].max() < 0  # rated down: less likely
    else:
        after_rejected = logps_of(model, data.rejected, tokenizer)
        assert ((after_chosen - after_rejected) - (before_chosen - before_rejected)).min() > 0  # margins grow
    # the reference: the fine-tuned adapter's log-probabilities, whatever the step did
    frozen = add_lora(load_model(settings.base_model, settings.cache_dir), settings.build.train.lora)
    frozen.load_state_dict(reference_state)
    with accelerator.autocast():  # as the stage computed it
        again = logps_of(frozen, [data.chosen[i] for i in stage.batches[0]], tokenizer)
    assert torch.allclose(again.float(), reference[("chosen", 0)], atol=1e-4)
    assert not torch.allclose(logps_of(model, data.chosen, tokenizer), before_chosen)


def test_kto_without_both_ratings_is_a_clear_error(tmp_path, tiny_base, cache_dir):
    project = tiny_project(tmp_path, tiny_base, cache_dir, [r for r in RATED if r[2] == "up"], "{enabled: true}")
    from bot.data.project import compile_data
    from bot.training.preference import NoPreferenceData

    compile_data(load_settings(project))
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    data = load_preference_rows(settings.build_dir / PREFERENCES_FILE, tokenizer, 512, "kto")
    with pytest.raises(NoPreferenceData, match="2 up, 0 down"):
        PreferenceStage(None, None, tokenizer, data, PreferenceConfig(enabled=True), seed=0)


def test_kto_batches_never_leave_a_row_alone(tmp_path, tiny_base, cache_dir):
    """KTO's KL estimate pairs each row with another of its batch: five rows in batches of four
    make one batch of five, not four and one (which crashed)."""
    from bot.data.project import compile_data

    project = tiny_project(tmp_path, tiny_base, cache_dir, RATED + RATED[:1], "{enabled: true}")
    compile_data(load_settings(project))
    settings = load_settings(project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    data = load_preference_rows(settings.build_dir / PREFERENCES_FILE, tokenizer, 512, "kto")
    stage = PreferenceStage(None, None, tokenizer, data, PreferenceConfig(enabled=True, batch_size=4), seed=0)
    assert sorted(len(b) for b in stage.batches) == [5]
    assert sorted(i for b in stage.batches for i in b) == list(range(5))


def test_train_saves_both_models_and_the_preference_one_must_not_lose(tmp_path, tiny_base, cache_dir):
    project = tiny_project(tmp_path, tiny_base, cache_dir, RATED, "{enabled: true, learning_rate: 1.0e-3}")
    outcome = train_and_activate(load_settings(project), progress_bar=False)
    settings = load_settings(project)
    found = {m.id: m for m in models.trained_models(settings.models_dir)}
    assert len(found) == 2
    tuned = next(m for m in found.values() if "started_from" in m.manifest)
    started = found[tuned.manifest["started_from"]]
    assert "preference" not in started.manifest
    assert tuned.manifest["preference"]["rows"] == 4 and tuned.manifest["preference"]["rated_down"] == 2
    # the fine-tuned model on disk is the reference, untouched by the stage
    fine = PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir), started.adapter_dir)
    pref = PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir), tuned.adapter_dir)
    fine_b = [p for n, p in fine.named_parameters() if "lora_B" in n]
    pref_b = [p for n, p in pref.named_parameters() if "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(fine_b, pref_b, strict=True))
    verdict = tuned.manifest["activation"]
    assert verdict["reason"]
    active = models.active_id(settings.models_dir)
    assert active == (tuned.id if verdict["activated"] else started.id) == outcome.model.id


def test_a_preference_model_that_loses_on_any_measure_is_not_activated():
    def report(**values):
        base = {"action_accuracy": 0.8, "handoff_accuracy": 0.9, "expectation_pass_rate": 0.7}
        return {"summary": {"fine-tuned": base | {"conversation_pass_rate": 0.5} | values}}

    assert no_worse(report(), report(), "A").activate
    lost = no_worse(report(handoff_accuracy=0.85), report(), "A")
    assert not lost.activate and "held-out handoff accuracy 85.0% against 90.0%" in lost.reason
    assert not no_worse(report(conversation_pass_rate=0.49), report(), "A").activate
    assert not no_worse(report(), None, "A").activate


def test_an_interrupted_preference_stage_resumes_from_its_checkpoint(
    tmp_path, tiny_base, cache_dir, monkeypatch, capsys
):
    """Ctrl-C in the preference stage keeps a checkpoint in the new model's folder; `bot train
    --resume` goes on from it, on the fine-tuned model it started from, and ends with the
    weights of a run never interrupted."""
    import json

    from safetensors.torch import load_file

    from bot.cli import main
    from bot.training.preference import PreferenceStage as Stage

    stage = "{enabled: true, learning_rate: 1.0e-3, batch_size: 2, epochs: 3}"  # 2 batches an epoch: 6 steps
    straight = tiny_project(tmp_path / "straight", tiny_base, cache_dir, RATED, stage)
    assert main(["-C", str(straight), "train"]) == 0
    broken = tiny_project(tmp_path / "broken", tiny_base, cache_dir, RATED, stage)
    real_loss, calls = Stage.loss, {"n": 0}

    def interrupt_on_fourth_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(Stage, "loss", interrupt_on_fourth_step)
    assert main(["-C", str(broken), "train"]) == 1
    err = capsys.readouterr().err
    assert "preference stage interrupted; checkpoint saved at step 3" in err, err[-2000:]
    settings = load_settings(broken)
    (fine,) = models.trained_models(settings.models_dir)  # the fine-tuned model alone is saved
    (run,) = [p for p in settings.models_dir.iterdir() if (p / "checkpoint").is_dir()]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 3

    monkeypatch.setattr(Stage, "loss", real_loss)
    assert main(["-C", str(broken), "train", "--resume"]) == 0
    assert "resuming the preference stage at step 3 of 6" in capsys.readouterr().err
    tuned = models.get(settings.models_dir, run.name)
    assert tuned.manifest["started_from"] == fine.id and tuned.manifest["preference"]["steps"] == 6
    assert not (run / "checkpoint").exists()
    assert models.active_id(settings.models_dir) in (fine.id, tuned.id)
    (reference,) = [
        m for m in models.trained_models(load_settings(straight).models_dir) if "started_from" in m.manifest
    ]
    a = load_file(tuned.adapter_dir / "adapter_model.safetensors")
    b = load_file(reference.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


CALLS = """preferences:
  - id: right-call
    rating: up
    turns:
      - user: where is KM-104233?
      - action: check_order
        args: {order_id: KM-104233}
  - id: wrong-handoff
    rating: down
    turns:
      - user: where is KM-104233?
      - handoff: the customer asked about an order
  - id: pair-with-a-call
    rejected: "No."
    turns:
      - user: where is KM-104233?
      - action: check_order
        args: {order_id: KM-104233}
"""


def test_a_rated_call_trains_the_call_alone_and_a_pair_must_end_in_words(tmp_path, tiny_base, cache_dir):
    """An automatic rating judges calls and handoffs too: such a row ends with the call (not its
    result), the only trained message; a pair is an agent's words against the bot's."""
    from bot.data.project import compile_data
    from bot.errors import InvalidFiles

    project = tiny_project(tmp_path, tiny_base, cache_dir, [], "{enabled: true}")
    rated = project / "training_data" / "preferences" / "rated.yml"
    rated.write_text(CALLS)
    with pytest.raises(InvalidFiles) as raised:
        compile_data(load_settings(project))
    (problem,) = raised.value.problems
    assert "rated.yml:17:9" in str(problem) and "a pair ('rejected') ends with a 'bot' reply" in str(problem)
    rated.write_text(CALLS[: CALLS.index("  - id: pair-with-a-call")])
    compile_data(load_settings(project))
    rows = [
        json.loads(line) for line in (load_settings(project).build_dir / PREFERENCES_FILE).read_text().splitlines()
    ]
    assert [(r["id"], r["desirable"]) for r in rows] == [("right-call", True), ("wrong-handoff", False)]
    for row, name in zip(rows, ["check_order", "handoff_to_human"], strict=True):
        last = row["messages"][-1]
        assert last["tool_calls"][0]["function"]["name"] == name and last["weight"] == 1
        assert all(m["role"] != "tool" for m in row["messages"])
