"""Helpers for the drafts tests: a project with the starter training data, and a golden
conversation full of personal data, as the server would have stored it."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.serve.events import new_event

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
        new_event("user", text="Hi, my name is Priya Shah. There's a £12 charge on my bill I don't recognise."),
        new_event("bot", text="I can look into that. What's your account number and postcode?"),
        new_event(
            "user",
            text="It's 40118822, ls6 2ab. If we get cut off ring me on 07911 123456 or email priya.shah@gmail.com",
        ),
        new_event(
            "action",
            name="verify_customer",
            arguments={"account_id": "40118822", "postcode": "LS6 2AB"},
            result={
                "verified": True,
                "first_name": "Priya",
                "email_on_file": "p****h@gmail.com",
                "phone": "+44 7911 123456",
            },
        ),
        new_event("slot", name="first_name", value="Priya", by="verify_customer"),
        new_event(
            "action",
            name="get_bill",
            arguments={"account_id": "40118822"},
            result={"month": "2026-10", "items": [{"label": "Roaming day pass, France", "amount": 12.0}]},
        ),
        new_event("bot", text="Thanks, Priya. The £12 is a roaming day pass from your trip to France on 14 October."),
        new_event("user", text="Fine. And my order KM-147730 never came. I paid with my card 4539 1488 0343 6467."),
        new_event(
            "action",
            name="check_order",
            arguments={"order_id": "KM-147730"},
            result={"status": "returned_to_sender", "carrier": "DPD", "return_id": "RT-233019"},
        ),
        new_event(
            "bot",
            text="Please don't share card numbers here, Priya. "
            "Order KM-147730 was returned to us by DPD (return RT-233019).",
        ),
        new_event("user", text="That's useless, I want a refund"),
        new_event("bot", text="I can't do refunds myself. Would you like me to pass you to a colleague?"),
    ]


def rate(events: list[dict], index: int, rating: str) -> dict:
    """A rating event for the stored event at `index` (after they were stored, with seq)."""
    return new_event("rating", rated_seq=events[index]["seq"], rating=rating)


def handed_off_events() -> list[dict]:
    """A conversation a person took over: the customer asks for one, an agent answers twice."""
    return [
        new_event("user", text="where is my order KM-175402"),
        new_event(
            "action",
            name="check_order",
            arguments={"order_id": "KM-175402"},
            result={"status": "delayed", "carrier": "Royal Mail"},
        ),
        new_event("bot", text="Order KM-175402 is delayed with Royal Mail."),
        new_event("user", text="I want to talk to a human"),
        new_event(
            "handoff",
            by="rule",
            reason="the customer asked for a person",
            text="I'm passing you to a member of our team.",
        ),
        new_event("user", text="hello??"),
        new_event("agent", text="Hi, I'm Dana from Kestrel. I've asked Royal Mail to prioritise it.", agent="Dana"),
        new_event("agent", text="It should reach you tomorrow.", agent="Dana"),
        new_event("user", text="ok thanks"),
        new_event("agent", text="You're welcome!", agent="Dana"),
        new_event("resume"),
    ]


async def store_conversation(store, sender: str, events: list[dict]) -> list[dict]:
    return [await store.append(sender, event) for event in events]
