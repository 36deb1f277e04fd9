"""The `bot` command. The only place that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from bot import cli_conversation_tests
from bot.cli_drafts import AUGMENT_HELP, EXPORT_HELP, cmd_augment, cmd_export, cmd_redact, cmd_review
from bot.cli_table import text_table
from bot.cli_tune import REDUCED_MINUTES, TUNE_HELP, cmd_tune
from bot.errors import BotError, InvalidFiles


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _stats_row_order(item) -> tuple[bool, bool, str]:
    """The training set first, and in each set the "(all)" row first, then the tags by name."""
    (name, tag), _counts = item
    return (name != "train", tag != "(all)", tag)


def _table(stats) -> str:
    header = ("set", "tag", "dialogues", "turns", "trained turns", "tokens", "trained tokens")
    rows = []
    for (name, tag), c in sorted(stats.rows.items(), key=_stats_row_order):
        rows.append((name, tag, c.dialogues, c.turns, c.trained_turns, c.tokens, c.trained_tokens))
    cells = [header] + [tuple(f"{v:,}" if isinstance(v, int) else v for v in row) for row in rows]
    out = text_table(cells, left=2)
    for (name, tag), c in sorted(stats.rows.items(), key=lambda kv: kv[0][0] != "train"):
        if tag == "(all)" and c.sequences != c.dialogues:
            out += (
                f"\n({name}: {c.dialogues:,} dialogue(s) make {c.sequences:,} sequences: a dialogue longer than "
                f"model.max_length is split at user turns)"
            )
    if stats.drafts:
        out += f"\n({stats.drafts} draft dialogue(s) awaiting review, not compiled)"
    return out


def cmd_validate(args) -> int:
    from bot.config import load_settings
    from bot.data.project import conversation_tests, validate

    settings = load_settings(args.project)
    data = validate(settings)
    tests = conversation_tests(settings, data)
    print(
        f"ok: {len(data.train)} training and {len(data.test)} held-out dialogues, {len(tests)} conversation tests, "
        f"{len(data.actions)} actions, no problems"
    )
    return 0


def cmd_stats(args) -> int:
    from bot.config import load_settings
    from bot.data.project import LazyTokenizer, statistics, validate

    settings = load_settings(args.project)
    tokenizer = LazyTokenizer(settings)
    print(_table(statistics(settings, validate(settings, tokenizer), tokenizer)))
    return 0


def cmd_tool_schema(args) -> int:
    from bot.config import load_settings
    from bot.data.project import validate
    from bot.data.tool_schema import tool_call_schema

    print(json.dumps(tool_call_schema(validate(load_settings(args.project)).actions), indent=2))
    return 0


def cmd_compile(args) -> int:
    from bot.config import load_settings
    from bot.data.project import compile_data

    settings = load_settings(args.project)
    files, stats = compile_data(settings)
    print(_table(stats))
    for path in (files.train_file, files.test_file, files.index_file):
        print(f"wrote {os.path.relpath(path)}")
    print(f"data hash {files.data_hash}")
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(args, progress):
    from transformers.utils import logging as transformers_logging

    from bot.config import apply_overlay, load_settings
    from bot.training.command import train_and_activate

    transformers_logging.disable_progress_bar()
    settings = load_settings(args.project)
    if args.config:
        settings = apply_overlay(settings, Path(args.config), args.config)
    return train_and_activate(
        settings,
        resume=args.resume,
        if_needed=args.if_needed,
        force=args.force,
        report=_say,
        progress_bar=progress is None,
        on_step=progress.step if progress else None,
    )


def cmd_train(args) -> int:
    from bot.training.progress_file import ProgressFile

    progress = None
    # Under `accelerate launch`, the main process writes it.
    if args.progress_file and os.environ.get("RANK", "0") == "0":
        progress = ProgressFile(args.progress_file)  # it replaces the progress bars
        # As a shell's background job: the program following it stops it with SIGINT.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        outcome = _train(args, progress)
    except BotError as e:
        if progress:
            progress.failed(str(e))
        raise
    if not outcome.main_process:
        return 0
    if progress:
        progress.done(
            outcome.model.id,
            trained=outcome.trained,
            activated=outcome.activated,
            gate_passed=outcome.passed_gate,
            gate_summary=outcome.reason,
        )
    if not outcome.trained:
        inactive = "not active: it did not pass the gate; 'bot models activate' overrides"
        state = "active" if outcome.activated else inactive
        print(f"model {outcome.model.id} already matches the training data: nothing to train ({state})")
        return 0
    t = outcome.model.manifest["training"]
    print(
        f"trained {outcome.model.id} in {t['seconds']:.0f} s: {t['steps']} steps, {t['tokens']:,} tokens "
        f"({t['tokens_per_second']:.0f}/s on {t['device']}, {t['precision']}), "
        f"held-out loss {t['held_out_loss'][-1]:.3f}"
    )
    report = os.path.relpath(outcome.report_dir / "report.html")
    if outcome.activated:
        forced = " (forced)" if outcome.model.manifest["activation"]["forced"] else ""
        print(f"activated{forced}: {outcome.reason}; report: {report}")
    else:
        print(f"not activated, the previous model stays live: {outcome.reason}; see {report} (--force overrides)")
    return 0


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _failure_classes(counts: dict[str, int]) -> str:
    """'3 wrong action, 1 bad arguments': the classes that occurred, else 'none'."""
    occurred = [f"{n} {name}" for name, n in counts.items() if n]
    return ", ".join(occurred) or "none"


def eval_table(document: dict) -> str:
    """The four modes side by side, then expectations passed and chrF per tag, then one line per
    mode with its action failures by class."""
    columns = (
        "conversations",
        "chrF",
        "action acc",
        "handoff acc",
        "expect pass",
        "adversarial",
        "leaks",
        "loss",
        "seconds",
    )
    rows = [("mode",) + columns]
    for mode in document["modes"]:
        s = document["summary"][mode]
        rows.append(
            (
                mode,
                _percent(s.get("conversation_pass_rate")),
                f"{s['chrf']:.1f}",
                _percent(s["action_accuracy"]),
                _percent(s["handoff_accuracy"]),
                _percent(s["expectation_pass_rate"]),
                _percent(s["adversarial_pass_rate"]),
                str(s["leaks"]),
                "-" if s["loss"] is None else f"{s['loss']:.3f}",
                f"{s['seconds']:.0f}",
            )
        )
    tags = sorted({t for m in document["modes"] for t in document["by_tag"][m]}, key=lambda t: (t != "adversarial", t))
    tag_rows = [("tag (expect pass / chrF)",) + tuple(document["modes"])]
    for tag in tags:
        cells = []
        for mode in document["modes"]:
            t = document["by_tag"][mode].get(tag)
            cells.append("-" if t is None else f"{t['expectation_pass_rate']:.0%} / {t['chrf']:.0f}")
        tag_rows.append((tag,) + tuple(cells))

    actions = document.get("actions") or {}
    width = max(len(m) for m in document["modes"])
    class_lines = ["action failures"] + [
        f"{mode.ljust(width)}  " + _failure_classes(actions[mode]["failure_classes"])
        for mode in document["modes"]
        if mode in actions
    ]
    return text_table(rows) + "\n\n" + text_table(tag_rows) + ("\n\n" + "\n".join(class_lines) if actions else "")


def cmd_eval(args) -> int:
    from transformers.utils import logging as transformers_logging

    from bot.config import load_settings
    from bot.evaluation.cases import MODES
    from bot.evaluation.run import evaluate

    transformers_logging.disable_progress_bar()
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: unknown mode '{unknown[0]}': choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    document, folder = evaluate(load_settings(args.project), model_id=args.model, modes=modes)
    print(eval_table(document))
    expectations = sum(f.get("kind", "expectation") == "expectation" for f in document["failures"])
    print(f"\n{expectations} failed expectations; report: {os.path.relpath(folder / 'report.html')}")
    return 0


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


def cmd_serve(args) -> int:
    import logging

    from bot.config import load_settings
    from bot.serve.app import run
    from bot.serve.shutdown import exit_now

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.project)
    if args.engine:
        serve = settings.build.serve.model_copy(update={"engine": args.engine})
        settings.build = settings.build.model_copy(update={"serve": serve})
    if args.model_server:
        server = settings.endpoints.model_server.model_copy(update={"url": args.model_server})
        settings.endpoints = settings.endpoints.model_copy(update={"model_server": server})
    host, port = args.host or settings.build.serve.host, args.port or settings.build.serve.port
    _say(f"starting the bot on http://{host}:{port} (widget demo at /, health at /health); Ctrl-C stops it")
    run(settings, host, port, args.actions)
    exit_now(0)  # stopped and closed: the interpreter's slow teardown would overrun serve.shutdown_timeout_s


def cmd_chat(args) -> int:
    from bot.cli_chat import run
    from bot.config import load_settings

    run(load_settings(args.project), args.url, args.sender)
    return 0


def cmd_init(args) -> int:
    from bot.scaffold import create_project

    folder = create_project(Path(args.dir))
    print(f"created a bot project in {folder}: next, 'bot -C {args.dir} data validate'")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bot", description="Contact-center chatbot: data, training, evaluation and serving."
    )
    p.add_argument("-C", "--project", default=".", metavar="DIR", help="the bot project's folder (default: here)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="check and compile training_data/")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_commands.add_parser("validate", help="check every file; list every problem").set_defaults(run=cmd_validate)
    data_commands.add_parser("compile", help="write build/train.jsonl and build/test.jsonl").set_defaults(
        run=cmd_compile
    )
    data_commands.add_parser("stats", help="dialogues, turns and tokens per tag, without writing").set_defaults(
        run=cmd_stats
    )
    data_commands.add_parser(
        "tool-schema", help='the JSON Schema of a tool call (vLLM\'s structured output: {"json": schema})'
    ).set_defaults(run=cmd_tool_schema)
    export_data = data_commands.add_parser(
        "export",
        help="stored conversations into redacted dialogue drafts under training_data/drafts/",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export_data.add_argument(
        "--conversation", metavar="ID", help="only this conversation (drafted again even if it was before)"
    )
    export_data.add_argument(
        "--since", metavar="YYYY-MM-DD", help="only conversations active on or after this day (UTC)"
    )
    export_data.add_argument("--handed-off", action="store_true", help="only conversations handed to a person")
    export_data.add_argument(
        "--rated", choices=["down", "up"], help="only conversations with a bot message the customer rated so"
    )
    export_data.set_defaults(run=cmd_export)
    augment = data_commands.add_parser(
        "augment",
        help="the training dialogues rewritten in the shapes customers write, as drafts to review",
        description=AUGMENT_HELP,
    )
    augment.add_argument(
        "--shape",
        action="append",
        choices=["details-first", "typos", "text-speak", "thanks", "irate", "mixed"],
        help="a shape to write (again for more; default: all)",
    )
    augment.add_argument("--tag", help="only dialogues with this tag")
    augment.add_argument("--seed", type=int, default=0, help="picks among the choices a shape makes (default 0)")
    augment.set_defaults(run=cmd_augment)
    data_commands.add_parser(
        "review",
        help="walk the drafts: show each with its validation; accept into dialogues/ or tests/, edit, or reject",
    ).set_defaults(run=cmd_review)

    train = commands.add_parser("train", help="fine-tune a LoRA adapter on the training data and activate it")
    train.add_argument("--resume", action="store_true", help="continue the last interrupted run from its checkpoint")
    train.add_argument("--if-needed", action="store_true", help="do nothing when a model already matches the data")
    train.add_argument("--force", action="store_true", help="activate the new model even if it fails the gate")
    train.add_argument(
        "--config",
        metavar="FILE",
        help="apply FILE's 'train:' section over config.yml's (e.g. the tuned.yml 'bot tune' writes)",
    )
    train.add_argument(
        "--progress-file",
        metavar="FILE",
        help="write progress as JSON lines to FILE instead of progress bars (steps, ETA, loss, the gate's verdict)",
    )
    train.set_defaults(run=cmd_train)

    tune = commands.add_parser(
        "tune",
        help="grid-search learning rate, epochs, LoRA rank and layers on a validation split of the training dialogues",
        description=TUNE_HELP.format(reduced_minutes=REDUCED_MINUTES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search = tune.add_mutually_exclusive_group()
    search.add_argument(
        "--reduced",
        action="store_true",
        help=f"2 learning rates, 1 epoch each: about {REDUCED_MINUTES} min on a 2-core CPU (default without CUDA)",
    )
    search.add_argument("--full", action="store_true", help="the full 36-candidate grid (default on CUDA)")
    tune.add_argument(
        "--grid",
        metavar="FILE",
        help="YAML: dotted train settings to lists of values, e.g. 'lora.rank: [8, 16]' (replaces the built-in grid)",
    )
    tune.add_argument(
        "--output", metavar="FILE", help="where to write the best settings (default: tuned.yml in the project)"
    )
    tune.set_defaults(run=cmd_tune)

    evaluate = commands.add_parser(
        "eval", help="fine-tuned against zero-, one- and few-shot on the held-out dialogues"
    )
    evaluate.add_argument("--model", metavar="ID", help="the model to evaluate (default: the active one)")
    evaluate.add_argument(
        "--modes", metavar="LIST", help="comma-separated subset of zero-shot,one-shot,few-shot,fine-tuned"
    )
    evaluate.set_defaults(run=cmd_eval)
    cli_conversation_tests.add_parser(commands)

    model_cmds = commands.add_parser("models", help="list, activate and export trained models")
    model_actions = model_cmds.add_subparsers(dest="models_command", required=True, metavar="ACTION")
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

    serve = commands.add_parser("serve", help="serve the active model: chat API, widget, OpenAI-compatible API")
    serve.add_argument("--host", help="address to listen on (default: serve.host in config.yml, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port in config.yml, 5005)")
    serve.add_argument(
        "--engine",
        choices=["batching", "serial"],
        help="generation engine (default: serve.engine in config.yml, batching)",
    )
    serve.add_argument(
        "--model-server",
        metavar="URL",
        help="generate on this OpenAI-compatible model server (vLLM or a bot serve); no weights are loaded here "
        "(default: model_server.url in endpoints.yml)",
    )
    serve.add_argument(
        "--actions",
        metavar="PACKAGE",
        help="also run a rasa-sdk action server for PACKAGE (e.g. actions), stopped with the bot",
    )
    serve.set_defaults(run=cmd_serve)

    chat = commands.add_parser("chat", help="chat with the bot in the terminal")
    chat.add_argument("--url", help="a running server (http://127.0.0.1:5005); default: the active model in process")
    chat.add_argument("--sender", help="conversation id (default: a new one)")
    chat.set_defaults(run=cmd_chat)

    conversations = commands.add_parser("conversations", help="stored conversations")
    conversation_actions = conversations.add_subparsers(dest="conversations_command", required=True, metavar="ACTION")
    redact = conversation_actions.add_parser(
        "redact", help="replace the personal data of one stored conversation in place (a data-protection request)"
    )
    redact.add_argument("id", help="the conversation id (sender)")
    redact.set_defaults(run=cmd_redact)

    init = commands.add_parser("init", help="create a new bot project with an example persona and dialogues")
    init.add_argument("dir", help="folder to create (must not hold a bot project yet)")
    init.set_defaults(run=cmd_init)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except InvalidFiles as e:
        for problem in e.problems:
            print(problem)
        files = len({p.path for p in e.problems})
        count = len(e.problems)
        print(f"{count} error{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''}")
        return 1
    except BotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
