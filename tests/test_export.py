"""`bot models export ID --adapter DIR`: a PEFT folder that loads on the base model it names and
generates what the in-process engine generates; what vLLM reads is there; bad requests are typed
errors. (vLLM itself is not run here.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
import torch
from conftest import make_tiny_project
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot import export, models
from bot.cli import main
from bot.config import load_settings
from bot.engine.protocol import Finished
from bot.engine.weights import load_weights, start_engine
from bot.errors import BaseModelUnavailable
from bot.pipelines.train import train_and_activate
from bot.rendering import prompt_ids

MESSAGES = [{"role": "user", "content": "Where is my order ES-1001?"}]
TOKENS = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, cache_dir):
    project = make_tiny_project(tmp_path_factory.mktemp("export"), tiny_base, cache_dir, epochs=2)
    return project, train_and_activate(load_settings(project), progress_bar=False).model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    project, model = trained
    settings = load_settings(project)
    target = tmp_path_factory.mktemp("exports") / "adapter"
    return export.export_adapter(
        model, settings.resolve_base(model.manifest["base_model"]), settings.cache_dir, target
    )


def greedy(model, prompt: list[int], tokenizer) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=TOKENS,
            min_new_tokens=TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


async def in_process_tokens(project, model, prompt) -> list[int]:
    """The project's own serving path: the loader (adapter merged, fp32) and the serial engine."""
    settings = load_settings(project)
    weights = load_weights(settings, model, dtype=torch.float32)
    engine = start_engine(
        weights, settings.build.serve, settings.build.model.max_length, kind="serial", ignore_eos=True
    )
    try:
        async for item in engine.stream(prompt, TOKENS):
            if isinstance(item, Finished):
                return list(item.token_ids)
    finally:
        await engine.close()


async def test_exported_adapter_generates_what_the_in_process_engine_does(trained, exported, tiny_base):
    project, model = trained
    config = json.loads((exported.folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve()) == exported.base
    tokenizer = AutoTokenizer.from_pretrained(exported.folder)  # the tokenizer vLLM's --tokenizer DIR loads
    prompt = prompt_ids(tokenizer, MESSAGES)
    assert prompt == prompt_ids(AutoTokenizer.from_pretrained(model.tokenizer_dir), MESSAGES)

    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32).eval()
    by_base = greedy(base, prompt, tokenizer)
    by_peft = greedy(PeftModel.from_pretrained(base, exported.folder).eval(), prompt, tokenizer)
    assert len(by_peft) == TOKENS and by_peft != by_base  # the adapter is applied, and it changes the reply
    assert by_peft == await in_process_tokens(project, model, prompt)


def test_adapter_folder_has_what_vllm_reads(trained, exported):
    project, model = trained
    folder = exported.folder
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        f.name for f in folder.iterdir()
    }
    config = json.loads((folder / "adapter_config.json").read_text())
    lora = load_settings(project).build.train.lora
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (lora.rank, lora.alpha, "LORA")
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert not config.get("modules_to_save") and not config["use_dora"] and config["bias"] == "none"
    # Only base_model_name_or_path names a place on this machine (documented: the base folder).
    text = json.dumps({k: v for k, v in config.items() if k != "base_model_name_or_path"})
    assert "/tmp" not in text and str(project) not in text
    # vLLM finds each LoRA weight by this name: base_model.model.<module>.lora_A|lora_B.weight
    with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    lora_weight = re.compile(r"base_model\.model\.model\.layers\.\d+\.\w+\.\w+\.lora_[AB]\.weight")
    assert names and all(lora_weight.fullmatch(n) for n in names), names
    assert exported.max_lora_rank == 8  # rank 8: vLLM's smallest --max-lora-rank that fits


def test_cli_prints_the_vllm_command_line(trained, tmp_path, capsys, tiny_base):
    project, model = trained
    target = tmp_path / "out"
    assert main(["-C", str(project), "models", "export", model.id, "--adapter", str(target)]) == 0
    out = capsys.readouterr().out
    command = shlex.split(next(line for line in out.splitlines() if "vllm.entrypoints" in line))
    assert command == [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_base.resolve()),
        "--tokenizer",
        str(target),
        "--enable-lora",
        "--lora-modules",
        f"{model.id}={target}",
        "--max-lora-rank",
        "8",
    ]
    assert f"model: {model.id}" in out


def test_export_names_this_machines_base_not_the_one_recorded_at_training(trained, tmp_path, tiny_base):
    """A model trained elsewhere records that machine's base path: the export names this one's."""
    project, model = trained
    moved = tmp_path / "models" / model.id
    shutil.copytree(model.folder, moved)
    config_file = moved / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": "/home/someone/.cache/bot/model"}))
    settings = load_settings(project)
    done = export.export_adapter(
        models.get(tmp_path / "models", model.id), str(tiny_base), settings.cache_dir, tmp_path / "out"
    )
    assert json.loads((done.folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_base.resolve()
    )


def test_bundled_base_is_named_by_its_converted_folder_and_a_hub_id_as_it_is(cache_dir):
    folder = export.vllm_base("bundled", cache_dir)
    assert folder == str(cache_dir / "SmolLM2-135M-Instruct-Q4_1" / "model")
    assert (cache_dir / "SmolLM2-135M-Instruct-Q4_1" / "model" / "config.json").is_file()
    assert export.vllm_base("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(BaseModelUnavailable, match="'/gone/base' this model was trained on is not on this machine"):
        export.vllm_base("/gone/base", cache_dir)


def test_unknown_model_is_a_clear_error(trained, tmp_path, capsys):
    project, _ = trained
    assert main(["-C", str(project), "models", "export", "20990101-000000", "--adapter", str(tmp_path / "a")]) == 1
    assert "error: no trained model '20990101-000000'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_folder_that_is_not_empty_is_never_overwritten(trained, tmp_path, capsys):
    project, model = trained
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    for form in ("--adapter", "--merged"):
        assert main(["-C", str(project), "models", "export", model.id, form, str(target)]) == 1
        assert f"error: {target} is not empty" in capsys.readouterr().err
    assert [f.name for f in target.iterdir()] == ["keep.txt"]
    (target / "keep.txt").unlink()  # an empty folder is fine
    assert main(["-C", str(project), "models", "export", model.id, "--adapter", str(target)]) == 0
    assert (target / "adapter_model.safetensors").is_file()


def test_a_model_without_an_adapter_is_a_clear_error(trained, tmp_path):
    project, model = trained
    broken = tmp_path / "models" / model.id
    shutil.copytree(model.folder, broken)
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    settings = load_settings(project)
    with pytest.raises(
        export.IncompleteModel, match=f"model {model.id} has no adapter: .*adapter_model.safetensors is missing"
    ):
        export.export_adapter(
            models.get(tmp_path / "models", model.id),
            model.manifest["base_model"],
            settings.cache_dir,
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_an_adapter_vllm_cannot_serve_is_refused_with_the_reason(trained, tmp_path):
    project, model = trained
    config = json.loads((model.adapter_dir / "adapter_config.json").read_text())
    with pytest.raises(export.AdapterNotServable, match="modules_to_save is set.*DoRA"):
        export.check_servable(model.id, {**config, "modules_to_save": ["lm_head"], "use_dora": True})
    with pytest.raises(export.AdapterNotServable, match="rank 1024 is above"):
        export.check_servable(model.id, {**config, "r": 1024})


def test_merged_export_prints_its_vllm_command_and_holds_its_tokenizer(trained, tmp_path, capsys):
    project, model = trained
    target = tmp_path / "merged"
    assert main(["-C", str(project), "models", "export", model.id, "--merged", str(target)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "vllm.entrypoints" in line)
    assert shlex.split(line)[3:] == ["--model", str(target), "--served-model-name", model.id]
    assert (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file()  # no --tokenizer needed
