"""`bot models list | activate | export`: the trained models of the project."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.cli.output import text_table
from bot.cli.parsing import command_group


def cmd_models_list(args) -> int:
    from bot import models
    from bot.config import load_settings

    settings = load_settings(args.project)
    found = models.trained_models(settings.models_dir)
    if not found:
        print("no trained models yet: run 'bot train'")
        return 0
    active = models.active_id(settings.models_dir)
    header = ("id", "created", "base", "data hash", "train loss", "held-out loss", "active")
    rows = [header]
    for m in found:
        t = m.manifest.get("training", {})
        held = t.get("held_out_loss") or [None]
        rows.append(
            (
                m.id,
                m.manifest.get("created", "?"),
                m.manifest.get("base_model", "?"),
                m.manifest.get("data_hash", "?"),
                f"{t['final_train_loss']:.3f}" if t.get("final_train_loss") is not None else "-",
                f"{held[-1]:.3f}" if held[-1] is not None else "-",
                "*" if m.id == active else "",
            )
        )
    print(text_table(rows, left=len(header), rule=False))
    return 0


def cmd_models_activate(args) -> int:
    from bot import models
    from bot.config import load_settings

    model = models.activate(load_settings(args.project).models_dir, args.id)
    print(f"model {model.id} is now active")
    return 0


def cmd_models_export(args) -> int:
    import shlex

    from bot import export, models
    from bot.config import load_settings

    settings = load_settings(args.project)
    model = models.get(settings.models_dir, args.id)
    # the base it was trained on, whatever config.yml says now
    base = settings.resolve_base(model.manifest["base_model"])
    if args.merged:
        target = export.export_merged(model, base, settings.cache_dir, Path(args.merged))
        print(f"wrote {target}: {model.id} merged into its base model, a plain Hugging Face folder")
        print(f"serve it with vLLM:\n  {shlex.join(export.merged_vllm_command(model.id, target))}")
    else:
        done = export.export_adapter(model, base, settings.cache_dir, Path(args.adapter))
        print(
            f"wrote {done.folder}: the LoRA adapter of {model.id} (rank {done.rank}) as a PEFT folder, "
            "with its tokenizer"
        )
        print(f"its base model (vLLM's --model): {done.base}")
        print(f"serve it with vLLM:\n  {shlex.join(done.vllm_command())}")
    print(f"then in endpoints.yml: model_server: {{url: http://HOST:8000, model: {model.id}}}")
    return 0


def cmd_models_export_brands(args) -> int:
    import shlex

    from bot import export
    from bot.config import load_settings

    settings = load_settings(args.project)
    brands = {name: load_settings(folder) for name, folder in settings.brand_folders().items()}
    done = export.export_brands(brands or {settings.root.name: settings}, Path(args.folder))
    for name in done.untrained:
        print(f"{name}: no trained model; it is served by the base model (vLLM: model 'base')")
    for name, adapter in done.adapters.items():
        print(f"{name}: wrote {adapter.folder}, the adapter of {adapter.model_id} (rank {adapter.rank})")
    if done.adapters:
        print(f"serve them all with one vLLM:\n  {shlex.join(export.brands_vllm_command(done.adapters))}")
        print("then in endpoints.yml: model_server: {url: http://HOST:8000}; each brand's requests name its adapter")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    model_actions = command_group(commands, "models", "list, activate and export trained models")
    model_actions.add_parser("list", help="a table of trained models").set_defaults(run=cmd_models_list)
    activate = model_actions.add_parser("activate", help="make a model the one the server loads")
    activate.add_argument("id")
    activate.set_defaults(run=cmd_models_activate)
    export = model_actions.add_parser("export", help="write a model for an inference server such as vLLM")
    export.add_argument("id")
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument(
        "--adapter",
        metavar="DIR",
        help="the LoRA adapter as a PEFT folder with its tokenizer (vLLM: --enable-lora --lora-modules ID=DIR)",
    )
    form.add_argument(
        "--merged",
        metavar="DIR",
        help="the adapter merged into the base model, a plain Hugging Face folder (vLLM, llama.cpp)",
    )
    export.set_defaults(run=cmd_models_export)
    brands = model_actions.add_parser(
        "export-brands",
        help="write every brand's active adapter for one vLLM (endpoints.yml brands; this project alone without)",
    )
    brands.add_argument("folder", metavar="DIR", help="a folder per brand is written in it")
    brands.set_defaults(run=cmd_models_export_brands)
