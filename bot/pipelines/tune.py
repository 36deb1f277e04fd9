"""`bot tune`: a small grid search over the training settings that matter (learning rate,
epochs, LoRA rank, how many top layers to adapt), scored on a validation split carved from the
training dialogues. The held-out tests (`training_data/tests/`) are never opened: they stay
for `bot eval` and the gate.

Each candidate is trained by the recipe (`bot.training.recipe.train`) into a temporary folder,
on the training dialogues minus the validation split, then scored as `bot eval` scores its
fine-tuned mode: a greedy reply at every bot turn of the validation dialogues, through the
batching engine, and the metrics of `bot.evaluation.metrics.summarize`. Candidates rank by
action accuracy, then the share of validation dialogues that pass their expectations, then chrF.
Nothing goes to models/ or build/: the table goes to results/tune/<id>/ (tune.json and a
self-contained report.html) and the winner's settings to tuned.yml, which
`bot train --config tuned.yml` applies over config.yml.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel

from bot import models
from bot.config import Settings, TrainConfig, deep_merge, nested
from bot.errors import BotError, InvalidFiles
from bot.typed import did_you_mean, parse
from bot.yamlsource import Document, load

# Each list is tried in full against every other: 3 x 2 x 3 x 2 = 36 candidates (the CUDA default).
FULL_GRID: dict[str, list] = {
    "learning_rate": [5.0e-4, 1.0e-3, 2.0e-3],
    "epochs": [2, 3],
    "lora.rank": [8, 16, 32],
    "lora.top_layers": [16, None],
}
# The CPU default: the setting that moves the scores most, the default against twice it, one
# epoch each: two candidates, so that it fits in 45 minutes on a 2-core CPU without bf16.
REDUCED_GRID: dict[str, list] = {"learning_rate": [1.0e-3, 2.0e-3]}
REDUCED_FIXED: dict[str, Any] = {"epochs": 1}  # unless the grid itself searches epochs; never written to tuned.yml
VALIDATION_SHARE = 0.15
NOT_TUNABLE = ("models_dir", "precision", "checkpoint_every")  # where and how runs are stored, not what they learn
RANKING = "action accuracy, then expectation pass rate, then chrF"
TUNE_FOLDER = "tune"  # under eval.results_dir
TUNED_FILE = "tuned.yml"


class TuneError(BotError):
    """The search can't run as asked (too few dialogues, several processes)."""


# --- the grid --------------------------------------------------------------------------------


def tunable_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Dotted paths of the TrainConfig settings a grid may vary ('learning_rate', 'lora.rank')."""
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += tunable_keys(annotation, f"{prefix}{name}.")
        elif f"{prefix}{name}" not in NOT_TUNABLE:
            keys.append(f"{prefix}{name}")
    return keys


@dataclass(frozen=True)
class Grid:
    values: dict[str, list]  # dotted TrainConfig path -> the values to try, in order
    source: str  # "built-in reduced grid", "built-in full grid" or the file's path

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination, the first key varying slowest."""
        keys = list(self.values)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.values[k] for k in keys))]


def with_values(train: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`train` with the dotted settings in `values` replaced (validated as config.yml is)."""
    return TrainConfig.model_validate(deep_merge(train.model_dump(), nested(values)))


def _flatten(value: dict, loc: tuple = ()) -> list[tuple[str, tuple]]:
    """(dotted key, location) of every list in a grid file; `lora: {rank: [...]}` and
    `lora.rank: [...]` both work."""
    found = []
    for key, item in value.items():
        if isinstance(item, dict):
            found += [(f"{key}.{inner}", where) for inner, where in _flatten(item, loc + (key,))]
        else:
            found.append((str(key), loc + (key,)))
    return found


def load_grid(file: Path, display: str | None = None) -> Grid:
    """A grid from YAML: each key a dotted TrainConfig path, each value a list of values to try.
    Every problem is reported with the file, line and column."""
    display = display or str(file)
    if not file.is_file():
        raise TuneError(f"{display}: no such grid file")
    doc = load(file, display)
    if not isinstance(doc.value, dict):
        raise InvalidFiles(
            [doc.problem((), "a grid is a mapping of settings to lists of values, such as 'lora.rank: [8, 16]'")]
        )
    keys, problems, grid = tunable_keys(), [], {}
    for dotted, loc in _flatten(doc.value):
        values = doc.value
        for part in loc:
            values = values[part]
        if dotted in NOT_TUNABLE:
            problems.append(
                doc.problem(loc, f"'{dotted}' is not searched by bot tune: set it in config.yml", key=True)
            )
            continue
        if dotted not in keys:
            hint = did_you_mean(dotted, keys)
            message = (
                f"unknown setting '{dotted}'{hint}: "
                "a grid key is a train setting such as 'learning_rate' or 'lora.rank'"
            )
            problems.append(doc.problem(loc, message, key=True))
            continue
        if dotted in grid:
            problems.append(doc.problem(loc, f"'{dotted}' is listed twice", key=True))
            continue
        if not isinstance(values, list) or not values:
            problems.append(
                doc.problem(loc, f"'{dotted}' must be a list of values to try, such as [{_example(dotted)}]")
            )
            continue
        for i, value in enumerate(values):
            # Validate the value alone, located at the value: the same messages as config.yml.
            at_value = Document(doc.path, None, marks={(): doc.where(loc + (i,))})
            problems += parse(TrainConfig, nested({dotted: value}), at_value)[1]
        grid[dotted] = list(values)
    if not grid and not problems:
        problems.append(doc.problem((), "the grid is empty: list at least one setting and its values"))
    if problems:
        raise InvalidFiles(problems)
    return Grid(grid, display)


def _example(dotted: str) -> str:
    return ", ".join(str(v) for v in FULL_GRID.get(dotted, ["1", "2"]))


def builtin_grid(reduced: bool) -> Grid:
    if reduced:
        return Grid(dict(REDUCED_GRID), "built-in reduced grid")
    return Grid(dict(FULL_GRID), "built-in full grid")


# --- the data: training dialogues only, and the validation split ------------------------------


def read_training_dialogues(settings: Settings, workdir: Path):
    """The persona, actions and training dialogues, read and checked as `bot data validate`
    reads them, from a copy of the data folder that leaves out tests/: the held-out tests are
    never opened. Problems name the project's own files."""
    from bot.data.checks import check
    from bot.data.loader import read_training_data
    from bot.data.project import LazyTokenizer

    source = settings.data_dir.resolve()
    try:
        relative = source.relative_to(settings.root)
    except ValueError:
        relative = Path(source.name)
    copy_root = workdir / "source"
    copy = copy_root / relative
    shutil.copytree(source, copy, ignore=lambda folder, names: ["tests"] if Path(folder).resolve() == source else [])
    data, problems = read_training_data(copy, copy_root)
    if data is not None:
        problems += check(data, max_length=settings.build.model.max_length, count_tokens=LazyTokenizer(settings).count)
    if problems:
        raise InvalidFiles(problems)
    return data


def _id_hash(dialogue) -> str:
    return hashlib.sha256(dialogue.id.encode("utf-8")).hexdigest()


def validation_split(dialogues: list, share: float = VALIDATION_SHARE) -> tuple[list, list]:
    """(training, validation): the `share` of the dialogues whose ids hash lowest (at least one,
    and at least one left to train on). Deterministic, and independent of file order: adding a
    dialogue moves at most one other in or out."""
    if len(dialogues) < 2:
        raise TuneError(f"bot tune needs at least 2 training dialogues (one to validate on), found {len(dialogues)}")
    count = min(len(dialogues) - 1, max(1, round(share * len(dialogues))))
    chosen = {d.id for d in sorted(dialogues, key=_id_hash)[:count]}
    return [d for d in dialogues if d.id not in chosen], [d for d in dialogues if d.id in chosen]


def reference_expectations(dialogue):
    """What a validation dialogue's replies are held to (training dialogues carry no `expect`),
    read off its own turns: call every action the support team's version calls, and hand off
    exactly when it does. `summarize` adds that the persona's secret never appears."""
    from bot.data.schema import ActionTurn, Expectations, HandoffTurn

    calls = list(dict.fromkeys(t.action for t in dialogue.turns if isinstance(t, ActionTurn)))
    return Expectations(must_call=calls, must_handoff=any(isinstance(t, HandoffTurn) for t in dialogue.turns))


def split_data(data):
    """`data` with its validation dialogues marked held out (as the evaluation reads tests/), each
    with its reference expectations; drafts left out. Returns (split data, training, validation)."""
    from bot.data.schema import TrainingData

    training, validation = validation_split(data.train)
    held_out = [replace(d, held_out=True, expect=reference_expectations(d)) for d in validation]
    return TrainingData(data.persona, data.actions, tuple(training + held_out)), training, held_out


# --- candidates ------------------------------------------------------------------------------


@dataclass
class Candidate:
    number: int  # 1-based, in grid order
    values: dict[str, Any]  # the searched settings
    scores: dict = field(default_factory=dict)  # summarize()'s summary
    validation_loss: float | None = None  # per bot token, after the last epoch (the recipe's held-out loss)
    train_seconds: float = 0.0
    score_seconds: float = 0.0
    steps: int = 0
    tokens_per_second: float = 0.0
    rank: int = 0

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "number": self.number,
            "settings": self.values,
            "scores": self.scores,
            "validation_loss": self.validation_loss,
            "train_seconds": self.train_seconds,
            "score_seconds": self.score_seconds,
            "steps": self.steps,
            "tokens_per_second": self.tokens_per_second,
        }


def ranking_key(candidate: Candidate) -> tuple:
    """Best first: action accuracy, then expectation pass rate, then chrF; ties keep grid order."""
    s = candidate.scores
    return (-s["action_accuracy"], -s["expectation_pass_rate"], -s["chrf"], candidate.number)


def rank(candidates: list[Candidate]) -> list[Candidate]:
    ranked = sorted(candidates, key=ranking_key)
    for position, candidate in enumerate(ranked, 1):
        candidate.rank = position
    return ranked


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'null' if v is None else v}" for k, v in values.items())


def _score(settings: Settings, model_id: str, data, progress_bar: bool) -> tuple[dict, float]:
    """The fine-tuned mode of `bot eval` on the validation dialogues: (summary, seconds)."""
    from tqdm.auto import tqdm

    from bot.engine.weights import load_weights
    from bot.evaluation.cases import cases
    from bot.evaluation.generation import first_steps
    from bot.evaluation.metrics import summarize

    started = time.monotonic()
    threads = torch.get_num_threads()  # load_weights leaves this thread one core; training wants them all back
    try:
        weights = load_weights(settings, models.get(settings.models_dir, model_id))
        held_out = cases(data)
        torch.manual_seed(settings.build.train.seed)
        with tqdm(
            total=len(held_out),
            disable=not progress_bar,
            unit="reply",
            desc="scoring",
            dynamic_ncols=True,
            leave=False,
        ) as bar:
            items = first_steps(settings, data, held_out, "fine-tuned", weights, bar.update)
        summary, _, _ = summarize(items, data.persona.secret)
    finally:
        torch.set_num_threads(threads)
    return summary, time.monotonic() - started


# --- the search ------------------------------------------------------------------------------


@dataclass
class TuneResult:
    candidates: list[Candidate]  # best first
    folder: Path  # results/tune/<id>/ with tune.json and report.html
    tuned_file: Path
    document: dict  # what tune.json holds

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def _shown(path: Path, root: Path) -> str:
    """A path relative to the project when it is inside it."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def tuned_yaml(best: Candidate, document: dict) -> str:
    """The winner's searched settings as a config.yml-shaped `train:` section, with where they came from."""
    fixed = document["fixed"]
    lines = [
        f"# Written by `bot tune` ({document['mode']} search, {document['created']}): "
        f"the best of {len(document['candidates'])} candidates",
        f"# on {len(document['data']['validation_dialogues'])} validation dialogues carved from the training data, "
        f"ranked by {RANKING}.",
        f"# Action accuracy {best.scores['action_accuracy']:.0%}, "
        f"expectations passed {best.scores['expectation_pass_rate']:.0%}, chrF {best.scores['chrf']:.1f}.",
    ]
    if fixed:
        lines.append(
            f"# Every candidate trained with {describe(fixed)} to save time; that is not applied here "
            "(config.yml's stays)."
        )
    lines += [
        f"# Report: {document['report']}",
        "# Apply with: bot train --config <this file>  (deep-merged over config.yml's train: section)",
    ]
    body = yaml.safe_dump(
        {"train": nested(best.values)}, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    return "\n".join(lines) + "\n" + body


def _train_and_score(candidate: Candidate, run_settings: Settings, data_hash: str, data, progress_bar: bool) -> None:
    """Trains one candidate into the temporary folder, scores it on the validation dialogues,
    records the figures on it and removes its model."""
    from bot.training.recipe import TrainingInterrupted, train

    try:
        result = train(run_settings, data_hash, progress_bar=progress_bar)
    except TrainingInterrupted:  # Ctrl-C: its checkpoint was in the temporary folder, nothing to resume
        raise KeyboardInterrupt from None
    model_id, training_record = result.model_id, result.manifest["training"]
    del result
    gc.collect()
    candidate.scores, seconds = _score(run_settings, model_id, data, progress_bar)
    shutil.rmtree(run_settings.models_dir / model_id, ignore_errors=True)
    gc.collect()
    candidate.train_seconds = training_record["seconds"]
    candidate.score_seconds = round(seconds, 1)
    candidate.steps = training_record["steps"]
    candidate.tokens_per_second = training_record["tokens_per_second"]
    candidate.validation_loss = (training_record["held_out_loss"] or [None])[-1]


def _data_record(training, validation, ranked: list[Candidate], data_hash: str) -> dict:
    return {
        "validation_share": VALIDATION_SHARE,
        "training_dialogues": [d.id for d in training],
        "validation_dialogues": [d.id for d in validation],
        "validation_turns": ranked[0].scores.get("turns", 0),
        "data_hash": data_hash,
    }


def _train_candidates(
    settings: Settings, build, workdir: Path, candidates, configs, data_hash: str, data, progress_bar: bool, report
) -> None:
    """Every candidate trained and scored in turn, under one progress bar counting epochs."""
    from tqdm.auto import tqdm

    outer = tqdm(
        total=sum(c.epochs for c in configs), disable=not progress_bar, unit="epoch", desc="tuning", dynamic_ncols=True
    )
    try:
        for candidate, cfg in zip(candidates, configs, strict=True):
            outer.set_postfix_str(f"candidate {candidate.number}/{len(candidates)}")
            report(f"candidate {candidate.number}/{len(candidates)}: {describe(candidate.values)}")
            cfg = cfg.model_copy(update={"models_dir": str(workdir / "models")})
            run_settings = Settings(settings.root, build.model_copy(update={"train": cfg}), settings.endpoints)
            _train_and_score(candidate, run_settings, data_hash, data, progress_bar)
            s = candidate.scores
            report(
                f"candidate {candidate.number}: action accuracy {s['action_accuracy']:.0%}, expectations passed "
                f"{s['expectation_pass_rate']:.0%}, chrF {s['chrf']:.1f}, "
                f"validation loss {candidate.validation_loss}, "
                f"trained in {candidate.train_seconds:.0f} s, scored in {candidate.score_seconds:.0f} s"
            )
            outer.update(cfg.epochs)
    finally:
        outer.close()


def tune(
    settings: Settings,
    *,
    grid: Grid | None = None,
    reduced: bool | None = None,
    output: Path | None = None,
    progress_bar: bool = True,
    report: Callable[[str], None] = lambda message: None,
) -> TuneResult:
    """Train and score every candidate of `grid` (default: the built-in reduced grid on the CPU,
    the full one on CUDA); write tune.json, report.html and the best settings (`output`,
    default tuned.yml in the project). `reduced` (default: on the CPU) also trains each
    candidate for REDUCED_FIXED's epochs unless the grid searches epochs."""
    from bot.data.compiler import write
    from bot.pipelines.tune_report import render_tune_html

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TuneError("bot tune runs in one process: start it without 'accelerate launch'")
    cuda = torch.cuda.is_available()
    reduced = (not cuda) if reduced is None else reduced
    grid = grid or builtin_grid(reduced)
    fixed = {k: v for k, v in REDUCED_FIXED.items() if k not in grid.values} if reduced else {}
    base = settings.build.train
    candidates = [Candidate(n, values) for n, values in enumerate(grid.candidates(), 1)]
    configs = [with_values(base, {**fixed, **c.values}) for c in candidates]
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="bot-tune-") as work:
        workdir = Path(work)
        data, training, validation = split_data(read_training_dialogues(settings, workdir))
        compiled = write(data, workdir / "build")  # train.jsonl: training minus validation; test.jsonl: validation
        mode = "reduced" if reduced else "full"
        fixed_note = f"; every candidate trains {describe(fixed)}" if fixed else ""
        report(
            f"tuning {len(candidates)} candidate(s) ({mode} search, {grid.source}"
            f"{fixed_note}) on {len(training)} training dialogues, "
            f"scored on {len(validation)} validation dialogue(s) left out of training "
            f"({VALIDATION_SHARE:.0%} by id hash)"
        )
        data_config = settings.build.data.model_copy(update={"build_dir": str(workdir / "build")})
        build = settings.build.model_copy(update={"data": data_config})
        _train_candidates(
            settings, build, workdir, candidates, configs, compiled.data_hash, data, progress_bar, report
        )

    ranked = rank(candidates)
    results_dir = settings.results_dir / TUNE_FOLDER
    results_dir.mkdir(parents=True, exist_ok=True)
    folder = results_dir / models.new_id(results_dir)
    folder.mkdir()
    tuned_file = output or settings.root / TUNED_FILE
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "reduced" if reduced else "full",
        "grid_source": grid.source,
        "grid": grid.values,
        "fixed": fixed,
        "ranking": RANKING,
        "base_settings": base.model_dump(mode="json"),
        "base_model": settings.build.model.base,
        "device": "cuda" if cuda else "cpu",
        "data": _data_record(training, validation, ranked, compiled.data_hash),
        "seconds": round(time.monotonic() - started, 1),
        "candidates": [c.to_json() for c in ranked],
        "best": ranked[0].values,
        "tuned_file": _shown(tuned_file, settings.root),
        "report": _shown(folder / "report.html", settings.root),
    }
    models.write_json(folder / "tune.json", document)
    (folder / "report.html").write_text(render_tune_html(document), encoding="utf-8")
    tuned_file.parent.mkdir(parents=True, exist_ok=True)
    tuned_file.write_text(tuned_yaml(ranked[0], document), encoding="utf-8")
    return TuneResult(ranked, folder, tuned_file, document)
