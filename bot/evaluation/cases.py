"""What is evaluated: every bot turn of every held-out dialogue, with the real conversation up to
that turn, under four prompting modes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.data.compiler import dialogue_messages
from bot.data.prompt import system_prompt
from bot.data.schema import HANDOFF_TOOL, ActionTurn, BotTurn, Dialogue, HandoffTurn, TrainingData, UserTurn
from bot.errors import BotError
from bot.rendering import BotStep, message_step, prompt_ids, tool_call_text

MODES = ("zero-shot", "one-shot", "few-shot", "fine-tuned")


class HeldOutOverlap(BotError):
    """A held-out dialogue also appears in the training data: its scores would be meaningless."""


@dataclass(frozen=True)
class Case:
    dialogue: Dialogue
    turn: int  # 1-based bot turn within the dialogue
    context: list[dict]  # messages before the bot turn, system prompt first
    reference: dict  # the assistant message the support team wrote

    @property
    def reference_step(self) -> BotStep:
        return message_step(self.reference)


@dataclass
class Prompted:
    """A case as one mode prompts it."""

    case: Case
    messages: list[dict]
    examples_used: int = 0
    reply: BotStep | None = None
    loss: float | None = None  # summed over the reference's tokens
    loss_tokens: int = 0


def _turn_key(dialogue: Dialogue) -> tuple:
    return tuple(t.model_dump_json() for t in dialogue.turns)


def check_overlap(data: TrainingData) -> None:
    """Refuse to score when a held-out dialogue has a training dialogue's id or turns."""
    train = {d.id: d for d in data.train}
    train_turns = {_turn_key(d): d for d in data.train}
    clashes = []
    for d in data.test:
        if d.id in train:
            clashes.append(f"held-out dialogue '{d.id}' has the id of a training dialogue ({train[d.id].doc.path})")
        elif _turn_key(d) in train_turns:
            twin = train_turns[_turn_key(d)]
            clashes.append(
                f"held-out dialogue '{d.id}' repeats the turns of training dialogue '{twin.id}' ({twin.doc.path})"
            )
    if clashes:
        listed = "\n  ".join(clashes)
        raise HeldOutOverlap(f"refusing to score, the held-out set overlaps the training data:\n  {listed}")


def cases(data: TrainingData) -> list[Case]:
    system = system_prompt(data.persona, data.actions)
    found = []
    for d in data.test:
        messages = dialogue_messages(d, system)
        turn = 0
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                turn += 1
                found.append(Case(d, turn, messages[:i], m))
    return found


def transcript(dialogue: Dialogue, bot_name: str) -> str:
    """A training dialogue as text, for one- and few-shot prompts."""
    lines = []
    for turn in dialogue.turns:
        if isinstance(turn, UserTurn):
            lines.append(f"Customer: {turn.user}")
        elif isinstance(turn, BotTurn):
            lines.append(f"{bot_name}: {turn.bot}")
        elif isinstance(turn, ActionTurn):
            lines.append(f"{bot_name}: {tool_call_text(turn.action, turn.args)}")
            lines.append(f"Tool result: {json.dumps(turn.result, ensure_ascii=False)}")
        elif isinstance(turn, HandoffTurn):
            lines.append(f"{bot_name}: {tool_call_text(HANDOFF_TOOL, {'reason': turn.handoff})}")
    return "\n".join(lines)


def example_dialogues(data: TrainingData, k: int) -> list[Dialogue]:
    """k short training dialogues with different first tags, so the examples cover several kinds
    of conversation (an adversarial one among them when there is one)."""
    by_length = sorted(data.train, key=lambda d: (sum(len(str(t)) for t in d.turns), d.id))
    chosen: list[Dialogue] = []
    seen_tags: set[str] = set()
    adversarial = next((d for d in by_length if d.adversarial), None)
    if adversarial and k > 1:
        chosen.append(adversarial)
        seen_tags.add(adversarial.tags[0])
    for d in by_length:
        tag = d.tags[0] if d.tags else ""
        if len(chosen) < k and d not in chosen and tag not in seen_tags:
            chosen.append(d)
            seen_tags.add(tag)
    chosen += [d for d in by_length if d not in chosen][: k - len(chosen)]  # fewer kinds than k: the shortest others
    return chosen


def with_examples(system: str, examples: list[Dialogue], bot_name: str) -> str:
    """A system prompt followed by example conversations, as the one- and few-shot modes show them."""
    if not examples:
        return system
    shown = [transcript(d, bot_name) for d in examples]
    text = "\n\n".join(f"Example conversation {n}:\n{t}" for n, t in enumerate(shown, 1))
    return system + "\n\nExamples of good replies:\n" + text


def mode_examples(mode: str, data: TrainingData, k: int) -> list[Dialogue]:
    """The example dialogues a mode puts in its prompt (none for zero-shot and fine-tuned)."""
    if mode in ("zero-shot", "fine-tuned"):
        return []
    return example_dialogues(data, 1 if mode == "one-shot" else k)


def prompted(case: Case, mode: str, data: TrainingData, tokenizer, k: int, budget: int) -> Prompted:
    """The messages `mode` shows the model: the examples go into the system prompt, as many as fit
    in `budget` tokens (the context minus the reply's room)."""
    examples = mode_examples(mode, data, k)
    while True:
        system = dict(case.context[0], content=with_examples(case.context[0]["content"], examples, data.persona.name))
        messages = [system] + case.context[1:]
        if not examples or len(prompt_ids(tokenizer, messages)) <= budget:
            return Prompted(case, messages, examples_used=len(examples))
        examples = examples[:-1]


def mode_system_prompt(mode: str, data: TrainingData, system: str, tokenizer, k: int, budget: int) -> str:
    """The system prompt a whole conversation is held with in `mode`: the examples that fit in
    half of `budget` tokens, so the conversation itself keeps the other half."""
    examples = mode_examples(mode, data, k)
    while True:
        prompt = with_examples(system, examples, data.persona.name)
        if not examples or len(prompt_ids(tokenizer, [{"role": "system", "content": prompt}])) <= budget // 2:
            return prompt
        examples = examples[:-1]
