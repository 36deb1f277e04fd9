"""Helpers for the drafts tests: a project with the starter training data, and a golden
conversation full of personal data, as the server would have stored it."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.conversations.events import (
    action_executed,
    agent_message,
    bot_message,
    handed_off,
    rated,
    resumed,
    slot_set,
    user_message,
)

ROOT = Path(__file__).resolve().parent.parent

# Every piece of personal data in the golden conversation, as it was written somewhere in it.
PERSONAL = [
    "Priya",
    "Shah",
    "priya.shah@gmail.com",
    "07911 123456",
    "+44 7911 123456",
    "7911123456",
    "4539 1488 0343 6467",
    "4539148803436467",
    "40118822",
    "LS6 2AB",
    "KM-147730",
    "RT-233019",
    "p****h@gmail.com",
]


def starter_project(folder: Path, cache_dir: Path, endpoints: str = "") -> Path:
    """A project with the starter training data (Kestrel Mobile's actions and dialogues)."""
    shutil.copytree(ROOT / "training_data", folder / "training_data")
    (folder / "config.yml").write_text(f"model:\n  cache_dir: {cache_dir}\n")
    (folder / "endpoints.yml").write_text(endpoints)
    return folder


def golden_events() -> list[dict]:
    """A conversation full of personal data: name, email, phone, card, postcode, account and
    order numbers, in the customer's messages, the actions' arguments and results and the bot's
    replies; one reply rated down."""
    return [
        user_message("Hi, my name is Priya Shah. There's a £12 charge on my bill I don't recognise."),
        bot_message("I can look into that. What's your account number and postcode?"),
        user_message(
            "It's 40118822, ls6 2ab. If we get cut off ring me on 07911 123456 or email priya.shah@gmail.com"
        ),
        action_executed(
            "verify_customer",
            {"account_id": "40118822", "postcode": "LS6 2AB"},
            {
                "verified": True,
                "first_name": "Priya",
                "email_on_file": "p****h@gmail.com",
                "phone": "+44 7911 123456",
            },
        ),
        slot_set("first_name", "Priya", by="verify_customer"),
        action_executed(
            "get_bill",
            {"account_id": "40118822"},
            {"month": "2026-10", "items": [{"label": "Roaming day pass, France", "amount": 12.0}]},
        ),
        bot_message("Thanks, Priya. The £12 is a roaming day pass from your trip to France on 14 October."),
        user_message("Fine. And my order KM-147730 never came. I paid with my card 4539 1488 0343 6467."),
        action_executed(
            "check_order",
            {"order_id": "KM-147730"},
            {"status": "returned_to_sender", "carrier": "DPD", "return_id": "RT-233019"},
        ),
        bot_message(
            "Please don't share card numbers here, Priya. "
            "Order KM-147730 was returned to us by DPD (return RT-233019)."
        ),
        user_message("That's useless, I want a refund"),
        bot_message("I can't do refunds myself. Would you like me to pass you to a colleague?"),
    ]


def rate(events: list[dict], index: int, rating: str) -> dict:
    """A rating event for the stored event at `index` (after they were stored, with seq)."""
    return rated(events[index]["seq"], rating)


def handed_off_events() -> list[dict]:
    """A conversation a person took over: the customer asks for one, an agent answers twice."""
    return [
        user_message("where is my order KM-175402"),
        action_executed("check_order", {"order_id": "KM-175402"}, {"status": "delayed", "carrier": "Royal Mail"}),
        bot_message("Order KM-175402 is delayed with Royal Mail."),
        user_message("I want to talk to a human"),
        handed_off("rule", "the customer asked for a person", text="I'm passing you to a member of our team."),
        user_message("hello??"),
        agent_message("Hi, I'm Dana from Kestrel. I've asked Royal Mail to prioritise it.", name="Dana"),
        agent_message("It should reach you tomorrow.", name="Dana"),
        user_message("ok thanks"),
        agent_message("You're welcome!", name="Dana"),
        resumed(),
    ]


async def store_conversation(store, sender: str, events: list[dict]) -> list[dict]:
    return [await store.append(sender, event) for event in events]
