"""The second starter brand, Lumen Energy (brands/lumen-energy): a whole bot project that
validates as it is, shares Kestrel's base model, runs exactly its declared actions, and was
written for itself: none of its customer messages is a near-copy of one of Kestrel's."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import yaml

from bot.config import load_settings
from bot.data.project import validate
from bot.data.schema import UserTurn

ROOT = Path(__file__).resolve().parent.parent
LUMEN = ROOT / "brands" / "lumen-energy"


def customer_messages(data) -> list[str]:
    return [t.user for d in data.train + data.test for t in d.turns if isinstance(t, UserTurn)]


def test_lumen_validates_with_enough_dialogues_and_shares_kestrels_base():
    lumen, kestrel = load_settings(LUMEN), load_settings(ROOT)
    data = validate(lumen)
    adversarial = [d for d in data.test if "adversarial" in d.tags]
    assert len(data.train) >= 60 and len(data.test) >= 12 and len(adversarial) >= 4
    assert lumen.base_model == kestrel.base_model
    assert lumen.endpoints.action_endpoint.url != kestrel.endpoints.action_endpoint.url  # its own action server
    assert "Lumen Energy" in data.persona.company


def test_lumen_is_its_own_writing():
    lumen = customer_messages(validate(load_settings(LUMEN)))
    kestrel = customer_messages(validate(load_settings(ROOT)))
    copied = []
    for message in (m.lower() for m in lumen if len(m) >= 30):
        for other in (k.lower() for k in kestrel if len(k) >= 30):
            matcher = difflib.SequenceMatcher(None, message, other)
            if matcher.real_quick_ratio() >= 0.8 and matcher.quick_ratio() >= 0.8 and matcher.ratio() >= 0.8:
                copied.append((message, other))
    assert copied == []


def test_lumens_example_actions_are_exactly_its_declared_ones():
    # in a process of its own: the starter's package is also called `actions`
    code = (
        "import sys; from rasa_sdk.executor import ActionExecutor; e = ActionExecutor(); "
        "e.register_package('actions'); print(' '.join(sorted(e.actions)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=LUMEN, capture_output=True, text=True, check=True)
    declared = yaml.safe_load((LUMEN / "training_data" / "actions.yml").read_text())["actions"]
    assert done.stdout.split() == sorted(declared)
