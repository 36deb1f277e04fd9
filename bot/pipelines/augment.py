"""`bot data augment`: the training dialogues rewritten in the shapes customers write, as drafts a
person reviews (bot.pipelines.drafts), never straight into training.

Each shape is a deterministic transform of a dialogue's customer turns that keeps its bot steps
valid: the same actions with the same arguments, every grounded value still given before the
call that uses it (the values themselves are never touched).

- `details-first`: a customer who answers the bot's question for details (an account number, a
  postcode, an order number) gives them in the message before instead, and the question goes:
  "my bill is wrong" / "What's your account number?" / "51234567, BN2 9PR" becomes
  "my bill is wrong. 51234567, BN2 9PR". When the answer held nothing but the details, about half
  the rewrites put them before the request instead ("51234567 BN2 9PR - my bill is wrong"), and
  some write them in lower case ("bn2 9pr"), as customers do.
- `two-requests`: the first message also asks what another dialogue's customer asked, where
  that needs no account (a roaming price, an order, an outage, the plans on sale): "my bill is
  wrong. Also, is KM-104233 on its way?". Both requests' calls run, and one reply answers both.
- `typos`: a slip in about one word in four (two letters swapped, one dropped or doubled).
- `text-speak`: lower case, no closing full stop, no apostrophes, "you" as "u", "please" as "pls".
- `thanks`: a customer who gives details ends with "ta", "cheers", "thanks".
- `irate`: the first message opens with frustration ("This is the third time I've asked.").
- `mixed`: details first where the dialogue allows it, two requests in one message for about a
  third of the dialogues that allow it, then one or two of the other shapes: one rewrite of each
  dialogue in the ways customers combine them.

The same dialogue and shape give the same draft every time (`seed` picks among the choices).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.data.grounding import source_text
from bot.data.schema import ActionTurn, BotTurn, Dialogue, HandoffTurn, TrainingData, UserTurn
from bot.errors import BotError
from bot.pipelines.draft_yaml import scalar, turn_lines

AUGMENTED_SOURCE = "dialogue:"  # a draft's `source`: the training dialogue it was made from
HEADER_MARK = "# Training dialogues rewritten"  # the draft's header, dropped when it is accepted
HEADER = HEADER_MARK + " in the shape '{shape}' by `bot data augment` (seed {seed})."
TYPO_SHARE = 0.25  # words of four letters or more given a slip
THANKS = ("ta", "cheers", "thanks", "thank you", "ty", "thx")
IRATE = (
    "This is the third time I've asked.",
    "Honestly, this is ridiculous.",
    "I'm really fed up.",
    "Nobody has sorted this yet.",
    "Not happy at all.",
)
DETAILS_BEFORE_SHARE = 0.5  # details-first rewrites that put the details before the request
LOWER_CASE_SHARE = 0.3  # ... that write them in lower case
DETAILS_JOINS = (" ", ", ", " / ")  # between two details given before the request
BEFORE_JOINS = (" - ", ". ", ", ", " ")  # between the details and the request after them
LABELS = {
    "account_id": ("account", "acc", "account no"),
    "postcode": ("postcode", "pc"),
    "order_id": ("order", "order no"),
}
LABEL_WORDS = {w for labels in LABELS.values() for label in labels for w in label.split()}
FILLER = set("it its it's is and my the sure yes yeah ok okay here you go are".split())  # around bare details
TWO_REQUESTS_SHARE = 0.5  # mixed rewrites that also ask a second request in the first message
ACCOUNTLESS = {"roaming_rates", "check_order", "check_outage", "list_plans"}  # second requests: no account needed
ALSO = ("Also, ", "Oh and ", "And ", "While I'm here, ", "One more thing: ", "Plus ")
UNMIXED_TAGS = {  # conversations nobody adds a second errand to, nor takes one from
    "adversarial",
    "security",
    "fraud",
    "injection",
    "abuse",
    "policy-bait",
    "social-engineering",
    "prompt-extraction",
    "off-topic",
}
GREETING = re.compile(r"^(hi|hello|hiya|hey|morning|evening)\b[,!. ]*", re.IGNORECASE)
OPENING_COURTESY = re.compile(r"^(Thanks|Thank you|Great|OK|Okay|Sure|Right)\b[^.!?]*[.!]\s+")
TEXT_SPEAK = {"you": "u", "your": "ur", "please": "pls", "thanks": "thx", "are": "r", "to": "2", "for": "4"}


class UnknownShape(BotError):
    """A shape `bot data augment` does not know."""


@dataclass(frozen=True)
class Variant:
    """A dialogue rewritten in one shape: its turns as draft YAML takes them."""

    source: Dialogue
    shape: str
    turns: list[dict]


def _turn_dict(turn) -> dict:
    if isinstance(turn, UserTurn):
        return {"user": turn.user}
    if isinstance(turn, BotTurn):
        return {"bot": turn.bot} | ({} if turn.train else {"train": False})
    if isinstance(turn, HandoffTurn):
        return {"handoff": turn.handoff}
    assert isinstance(turn, ActionTurn)
    return {"action": turn.action, "args": dict(turn.args), "result": turn.result}


def _argument_values(d: Dialogue) -> list[str]:
    """Every argument value the dialogue's calls carry: what a rewrite must leave exactly as it is."""
    values = []
    for turn in d.turns:
        if isinstance(turn, ActionTurn):
            values += [source_text(v) for v in turn.args.values()]
    return [v for v in values if v]


def _protected(text: str, values: list[str]) -> list[tuple[int, int]]:
    spans = []
    for value in values:
        for m in re.finditer(re.escape(value), text, re.IGNORECASE):
            spans.append((m.start(), m.end()))
    return spans


def _rewrite_words(text: str, values: list[str], change: Callable[[str], str]) -> str:
    """`change` applied to each word of `text` outside the protected values."""
    spans = _protected(text, values)

    def one(m: re.Match) -> str:
        if any(start < m.end() and m.start() < end for start, end in spans):
            return m.group()
        return change(m.group())

    return re.sub(r"[A-Za-z']+", one, text)


def _slip(word: str, rng: random.Random, share: float = TYPO_SHARE) -> str:
    if len(word) < 4 or not word.isalpha() or rng.random() >= share:
        return word
    at = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]
    if kind == "drop":
        return word[:at] + word[at + 1 :]
    return word[:at] + word[at] + word[at:]


def _details_first(turns: list[dict], d: Dialogue, values: list[str], rng: random.Random) -> list[dict] | None:
    """The first bot question for details answered by the next customer message: gone, its
    answer joined to the message before it. None when the dialogue has no such question."""
    for i in range(len(turns) - 3):
        asked, question, answer, call = turns[i : i + 4]
        if not ("user" in asked and "bot" in question and "user" in answer and "action" in call):
            continue
        given = [(k, v) for k, v in ((k, source_text(a)) for k, a in call["args"].items()) if v]
        given = [(k, v) for k, v in given if v.lower() in answer["user"].lower()]
        if not given:
            continue
        first = asked["user"].rstrip()
        details = _details_alone(answer["user"], given, rng)
        if details and rng.random() < DETAILS_BEFORE_SHARE:
            if rng.random() < LOWER_CASE_SHARE:
                details = details.lower()
            merged = {"user": details + rng.choice(BEFORE_JOINS) + first}
        else:
            joint = ". " if first[-1:].isalnum() else " "
            merged = {"user": first + joint + answer["user"].strip()}
        return turns[:i] + [merged] + turns[i + 3 :]
    return None


def _details_alone(answer: str, given: list[tuple[str, str]], rng: random.Random) -> str | None:
    """The details of an answer that holds nothing else ("It's 51234567 and BN2 9PR."), as a
    customer puts them before a request: "51234567 BN2 9PR", "acc 51234567, postcode BN2 9PR".
    None when the answer says more than its details, which must then stay where it was."""
    rest = answer.lower()
    for _, value in given:
        rest = rest.replace(value.lower(), " ")
    if any(w not in FILLER and w not in LABEL_WORDS for w in re.findall(r"[a-z']+", rest)):
        return None
    labelled = rng.random() < 0.4
    parts = [f"{rng.choice(LABELS.get(k, (k.replace('_', ' '),)))} {v}" if labelled else v for k, v in given]
    return rng.choice(DETAILS_JOINS).join(parts)


@dataclass(frozen=True)
class Request:
    """A customer's first message that a dialogue answers with calls that need no account (a
    roaming price, an order, an outage, the plans on sale) and a reply: a second request another
    dialogue's customer can ask in the same message."""

    source: str
    user: str
    steps: list[dict]
    reply: str
    arguments: frozenset[str]


def _first_reply(turns: list[dict]) -> int | None:
    """Where the bot's first text reply stands when the dialogue opens with the customer, then
    only actions, then that reply (trained on); None otherwise (a handoff, an untrained reply)."""
    end = 1
    while end < len(turns) and "action" in turns[end]:
        end += 1
    if "user" not in turns[0] or end >= len(turns) or "bot" not in turns[end] or "train" in turns[end]:
        return None
    return end


def _requests(data: TrainingData) -> list[Request]:
    found = []
    for d in data.train:
        if "augmented" in d.tags or UNMIXED_TAGS & set(d.tags):
            continue
        turns = [_turn_dict(t) for t in d.turns]
        end = _first_reply(turns)
        if end is None or end == 1:
            continue  # no call before the first reply: nothing to ask alongside another request
        steps = turns[1:end]
        if "?" in turns[end]["bot"] or any(t["action"] not in ACCOUNTLESS for t in steps):
            continue  # a reply that asks something would leave the other dialogue's next turn answering it
        user = GREETING.sub("", turns[0]["user"].strip())
        arguments = frozenset(k for t in steps for k in t["args"])
        found.append(Request(d.id, user[:1].lower() + user[1:], steps, turns[end]["bot"].strip(), arguments))
    return found


def _two_requests(
    turns: list[dict], d: Dialogue, values: list[str], rng: random.Random, requests=()
) -> list[dict] | None:
    """Another dialogue's request that needs no account asked in this dialogue's first message
    too: its calls run after this request's, and one reply answers both (the other request's
    answer first when this reply asks the customer something). None for attacks and security
    scares, when the first exchange ends in a handoff, or when no other request fits (the same
    action or the same kind of detail)."""
    end = _first_reply(turns)
    if end is None or UNMIXED_TAGS & set(d.tags):
        return None
    mine = turns[1:end]
    names = {t["action"] for t in mine}
    arguments = {k for t in turns if "action" in t for k in t["args"]}
    fits = [
        r
        for r in requests
        if r.source != d.id and not names & {t["action"] for t in r.steps} and not arguments & r.arguments
    ]
    if not fits:
        return None
    other = rng.choice(fits)
    opener = turns[0]["user"].rstrip()
    joint = " " if opener[-1:] in ".!?" else ". "
    merged = {"user": opener + joint + rng.choice(ALSO) + other.user}
    reply = turns[end]["bot"].strip()
    if reply.endswith("?"):  # the question last, after its courtesy ("Thanks, Priya.") moved to the front
        courtesy = OPENING_COURTESY.match(reply)
        lead = courtesy.group() if courtesy else ""
        both = f"{lead}{other.reply} {reply[len(lead) :]}"
    else:
        both = f"{reply} {OPENING_COURTESY.sub('', other.reply, count=1)}"
    return [merged, *mine, *other.steps, {"bot": both}, *turns[end + 1 :]]


def _map_users(turns: list[dict], change: Callable[[str], str]) -> list[dict]:
    return [{"user": change(t["user"])} if "user" in t else t for t in turns]


def _typos(turns, d, values, rng):
    out = _map_users(turns, lambda text: _rewrite_words(text, values, lambda w: _slip(w, rng)))
    if out == turns:  # no word drew a slip: the first customer message gets one
        first = next(i for i, t in enumerate(turns) if "user" in t)
        slipped = {"done": False}

        def once(word: str) -> str:
            changed = word if slipped["done"] else _slip(word, rng, share=1.0)
            slipped["done"] = slipped["done"] or changed != word
            return changed

        out[first] = {"user": _rewrite_words(turns[first]["user"], values, once)}
    return out


def _text_speak(turns, d, values, rng):
    def speak(text: str) -> str:
        text = _rewrite_words(text, values, lambda w: TEXT_SPEAK.get(w.lower(), w.lower()).replace("'", ""))
        return text.rstrip(".")

    return _map_users(turns, speak)


def _thanks(turns, d, values, rng):
    changed = False
    out = []
    for t in turns:
        if "user" in t and any(v.lower() in t["user"].lower() for v in values):
            t = {"user": t["user"].rstrip() + (" " if t["user"].rstrip()[-1:] in ".!?" else ", ") + rng.choice(THANKS)}
            changed = True
        out.append(t)
    return out if changed else None


def _irate(turns, d, values, rng):
    first = next(i for i, t in enumerate(turns) if "user" in t)
    out = list(turns)
    out[first] = {"user": f"{rng.choice(IRATE)} {turns[first]['user']}"}
    return out


SURFACE = {"typos": _typos, "text-speak": _text_speak, "thanks": _thanks, "irate": _irate}


def _mixed(turns, d, values, rng, requests=()):
    """Details first where the dialogue allows, then one or two of the other shapes."""
    out = _details_first(turns, d, values, rng) or turns
    if rng.random() < TWO_REQUESTS_SHARE:
        out = _two_requests(out, d, values, rng, requests) or out
    for shape in rng.sample(sorted(SURFACE), k=rng.choice((1, 2))):
        out = SURFACE[shape](out, d, values, rng) or out
    return out


SHAPES: dict[str, Callable] = {
    "details-first": _details_first,
    "two-requests": _two_requests,
    **SURFACE,
    "mixed": _mixed,
}


def variants(data: TrainingData, shapes: list[str], *, seed: int = 0, tag: str | None = None) -> list[Variant]:
    """Each training dialogue (with `tag`, if given) in each shape that changes it; dialogues
    that are themselves rewrites (tagged `augmented`) are left out."""
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise UnknownShape(f"unknown shape '{unknown[0]}': choose from {', '.join(SHAPES)}")
    found = []
    requests = _requests(data)
    for shape in shapes:
        for d in data.train:
            if (tag and tag not in d.tags) or "augmented" in d.tags:
                continue  # a rewrite is never rewritten again: its slips would pile up
            turns = [_turn_dict(t) for t in d.turns]
            rng = random.Random(f"{seed}:{shape}:{d.id}")
            extra = {"requests": requests} if shape in ("two-requests", "mixed") else {}
            rewritten = SHAPES[shape](turns, d, _argument_values(d), rng, **extra)
            if rewritten and rewritten != turns:
                found.append(Variant(d, shape, rewritten))
    return found


def draft_text(shape: str, found: list[Variant], seed: int) -> str:
    """One draft file of a shape's variants, in the format of training_data/dialogues/."""
    lines = [
        HEADER.format(shape=shape, seed=seed),
        "# Read each dialogue: keep it (`bot data review`: accept into dialogues), edit it, or reject the file.",
        "# Until then it is never trained on.",
        "dialogues:",
    ]
    for v in found:
        lines += [
            f"  - id: {v.source.id}--{shape}",
            "    draft: true",
            f"    source: {scalar(AUGMENTED_SOURCE + v.source.id)}",
            f"    description: {scalar(f'{shape} rewrite of {v.source.id}')}",
            f"    tags: [{', '.join(scalar(t) for t in [*v.source.tags, 'augmented', shape])}]",
            "    turns:",
        ]
        for turn in v.turns:
            lines += turn_lines(turn, None)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class AugmentedDraft:
    shape: str
    name: str
    dialogues: int
    problems: list


def write_drafts(
    settings: Settings, data: TrainingData, shapes: list[str], *, seed: int = 0, tag: str | None = None
) -> list[AugmentedDraft]:
    """training_data/drafts/augment-<shape>.yml for each shape that changes some dialogue
    (replacing an earlier one of the same name), checked as `bot data review` will check it."""
    from bot.pipelines.drafts import drafts_dir, parse_draft

    found = variants(data, shapes, seed=seed, tag=tag)
    folder = drafts_dir(settings)
    if found:
        folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shape in shapes:
        mine = [v for v in found if v.shape == shape]
        if not mine:
            continue
        name = f"augment-{shape}"
        path = folder / f"{name}.yml"
        text = draft_text(shape, mine, seed)
        path.write_text(text, encoding="utf-8")
        _, problems = parse_draft(settings, text, path.relative_to(settings.root).as_posix())
        written.append(AugmentedDraft(shape, name, len(mine), problems))
    return written
