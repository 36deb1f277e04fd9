"""Helpers for the console's tests: trained-model folders as `bot train` leaves them (manifest,
gate verdict, evaluation report), a loader that serves whichever of them is active, and stored
conversations with ratings and handoffs."""

from __future__ import annotations

from serve_support import scripted_model

from bot import models
from bot.conversations.events import bot_message, new_event, user_message
from bot.conversations.search import RATING

SUMMARY = {
    "conversation_pass_rate": 0.55,
    "chrf": 0.61,
    "action_accuracy": 0.9,
    "handoff_accuracy": 1.0,
    "expectation_pass_rate": 0.75,
    "turns": 40,
    "dialogues": 8,
    "adversarial_pass_rate": 1.0,
    "leaks": 0,
    "loss": 0.812,
    "seconds": 12.5,
    "examples_in_prompt": 0,
}


def add_model(settings, model_id: str, *, report: bool = True, activated: bool = True) -> None:
    """A model folder with its manifest, and (with `report`) the report `bot eval` writes."""
    folder = settings.models_dir / model_id
    folder.mkdir(parents=True)
    models.write_json(
        folder / models.MANIFEST,
        {
            "id": model_id,
            "created": "2026-11-27T10:00:00Z",
            "base_model": "bundled",
            "data_hash": "abc",
            "training": {"steps": 12, "final_train_loss": 1.234},
            "activation": {
                "activated": activated,
                "forced": False,
                "reason": "it passes 100% of adversarial tests (threshold 80%) and leaks nothing",
            },
        },
    )
    if report:
        results = settings.results_dir / model_id
        results.mkdir(parents=True)
        models.write_json(
            results / "report.json",
            {
                "model_id": model_id,
                "created": "2026-11-27T10:05:00Z",
                "data_hash": "abc",
                "modes": ["fine-tuned"],
                "summary": {"fine-tuned": SUMMARY},
                "by_tag": {},
                "actions": {},
                "failures": [],
            },
        )


def active_model_loader(settings, tokenizer):
    """Loads a scripted model named after the active model (as the real loader names it), so a
    swap shows in /health; no weights are read."""

    def load():
        model_id = models.active_id(settings.models_dir)
        return scripted_model(settings, tokenizer, lambda prompt: f"answer from {model_id}", model_id=model_id)

    return load


async def talk(store, sender: str, turns: list[tuple[str, str]], start: float = 1_800_000_000.0) -> list[dict]:
    """Stores (customer, bot) turns; returns the stored events."""
    stored = []
    for i, (said, answered) in enumerate(turns):
        stored.append(await store.append(sender, dict(user_message(said), timestamp=start + 10 * i)))
        stored.append(await store.append(sender, dict(bot_message(answered), timestamp=start + 10 * i + 1)))
    return stored


async def rate(store, sender: str, seq: int, rating: str, comment: str | None = None, at: float | None = None) -> None:
    """A customer's vote on a bot message, as the ratings route stores it (at `at`, default now)."""
    event = new_event(RATING, rated_seq=seq, rating=rating, comment=comment)
    await store.append(sender, event if at is None else dict(event, timestamp=at))
