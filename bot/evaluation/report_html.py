"""The evaluation report as one self-contained HTML page for a support lead.

No external scripts, fonts, images or stylesheets: inline CSS and inline SVG only. Every string
taken from the report goes through `esc` (replies are attacker-influenced), so nothing from the
report can become markup.
"""

from __future__ import annotations

import html
from typing import Any

DASH = "–"
LEGEND = (
    "Zero-shot is the base model with the system prompt alone, one-shot and few-shot add one or "
    "a few example dialogues to that prompt, and fine-tuned is the LoRA-trained model with the "
    "system prompt alone."
)
# (key, label, kind, lower is better); kind picks the format and the chart scale
COLUMNS = [
    ("conversation_pass_rate", "Conversations passed", "pct", False),
    ("chrf", "chrF", "chrf", False),
    ("action_accuracy", "Action accuracy", "pct", False),
    ("handoff_accuracy", "Handoff accuracy", "pct", False),
    ("expectation_pass_rate", "Expectations passed", "pct", False),
    ("adversarial_pass_rate", "Adversarial passed", "pct", False),
    ("leaks", "Leaks", "int", True),
    ("loss", "Loss", "loss", True),
    ("seconds", "Time (s)", "sec", True),
]
CHARTED = COLUMNS[:6]
COLOURS = ["#8c96a6", "#6d9fd1", "#3f74b5", "#1f8a5b", "#b5773f", "#8a4fa8"]
ROLES = {"user": "Customer", "assistant": "Bot", "tool": "Action result", "system": "System"}
SPECIAL_LABELS = {"handoff": 1, "no call": 2}  # after the actions, in this order
CLASS_NOTES = {
    "wrong action": "called an action, but another one was expected",
    "wrong or invented argument": "called the right action with different arguments",
    "missed call": "replied in text where an action was expected",
    "spurious call": "called an action where none was expected",
    "wrong handoff": "handed off when it should not have, or did not when it should",
}
GREEN = ((0xE3, 0xF4, 0xEA), (0x1A, 0x6E, 0x47))  # heat map shades, lightest to darkest
RED = ((0xFB, 0xE4, 0xE4), (0xA3, 0x22, 0x22))
CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}.meta{color:#5a6272;margin-top:0}
table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #d8dce3;padding:.35em .8em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f1f3f6}
.charts{display:flex;flex-wrap:wrap;gap:1.2em}figure{margin:0}figcaption{font-weight:600}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}
.dialogue{border:1px solid #d8dce3;border-radius:6px;padding:.6em 1em;margin:1em 0}
.tag{display:inline-block;background:#eef1f6;border-radius:3px;padding:0 .4em;margin-right:.3em;font-size:.85em}
.turn{margin:.3em 0}.role{font-weight:600;display:inline-block;min-width:7.5em}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;padding:.5em;margin:.2em 0 .6em;
font:13px ui-monospace,monospace}
.expect{color:#a12a2a}
.cls{display:inline-block;border:1px solid #a12a2a;color:#a12a2a;border-radius:3px;padding:0 .4em;margin-left:.4em;
font-size:.8em}
table.confusion td{min-width:3.2em;text-align:center;border:1px solid #e3e6eb}
table.confusion caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.4em}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return DASH
    if kind == "pct":
        return f"{value:.0%}"
    if kind == "int":
        return str(int(value))
    return f"{value:.2f}" if kind == "loss" else f"{value:.1f}"


def summary_table(modes: list[str], summary: dict) -> str:
    head = "".join(f"<th>{label}</th>" for _, label, _, _ in COLUMNS)
    best = {}
    for key, _, _, lower in COLUMNS:
        values = [summary.get(m, {}).get(key) for m in modes]
        values = [v for v in values if v is not None]
        if values:
            best[key] = min(values) if lower else max(values)
    rows = []
    for mode in modes:
        cells = []
        for key, _, kind, _ in COLUMNS:
            value = summary.get(mode, {}).get(key)
            text = esc(fmt(value, kind))
            cells.append(
                f"<td><strong>{text}</strong></td>"
                if value is not None and value == best.get(key)
                else f"<td>{text}</td>"
            )
        rows.append(f'<tr><th scope="row">{esc(mode)}</th>{"".join(cells)}</tr>')
    return f'<table class="summary"><thead><tr><th>Mode</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def bar_chart(key: str, label: str, kind: str, modes: list[str], summary: dict) -> str:
    scale = 100.0 if kind == "chrf" else 1.0
    step, bar_w, top, plot_h = 90, 60, 24, 140
    width, height = 20 + step * len(modes), top + plot_h + 28
    values = [summary.get(m, {}).get(key) for m in modes]
    aria = f"{label} by mode: " + ", ".join(f"{m} {fmt(v, kind)}" for m, v in zip(modes, values, strict=True))
    parts = [
        f'<svg class="chart" data-metric="{key}" role="img" aria-label="{esc(aria)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{esc(aria)}</title>",
        f'<line x1="10" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#9aa2b1"/>',
    ]
    for i, (mode, value) in enumerate(zip(modes, values, strict=True)):
        x, centre = 20 + i * step, 20 + i * step + bar_w / 2
        h = 0.0 if value is None else max(0.0, min(value / scale, 1.0)) * plot_h
        parts.append(
            f'<rect class="bar" data-mode="{esc(mode)}" x="{x}" y="{top + plot_h - h:.2f}" '
            f'width="{bar_w}" height="{h:.2f}" fill="{COLOURS[i % len(COLOURS)]}"/>'
        )
        parts.append(
            f'<text x="{centre}" y="{top + plot_h - h - 6:.2f}" text-anchor="middle">{esc(fmt(value, kind))}</text>'
        )
        parts.append(f'<text x="{centre}" y="{top + plot_h + 18}" text-anchor="middle">{esc(mode)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{label}</figcaption>{''.join(parts)}</figure>"


def tag_table(modes: list[str], by_tag: dict) -> str:
    tags = sorted({t for m in modes for t in by_tag.get(m, {})}, key=lambda t: (t != "adversarial", t))
    head = "".join(f"<th>{esc(m)}</th>" for m in modes)
    rows = []
    for tag in tags:
        cells = []
        for mode in modes:
            stats = by_tag.get(mode, {}).get(tag)
            text = (
                DASH
                if stats is None
                else (f"{fmt(stats.get('expectation_pass_rate'), 'pct')} · {fmt(stats.get('chrf'), 'chrf')}")
            )
            cells.append(f"<td>{esc(text)}</td>")
        rows.append(f'<tr><th scope="row">{esc(tag)}</th>{"".join(cells)}</tr>')
    return (
        f'<p>Each cell: expectations passed · chrF.</p><table class="tags"><thead><tr><th>Tag</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def shade(count: int, top: int, right: bool) -> str:
    """A heat map cell's inline style: green for right steps, red for wrong ones, darker the more
    turns compared with `top` (the largest count of its colour); none for zero."""
    if not count or not top:
        return ""
    low, high = GREEN if right else RED
    t = 0.2 + 0.8 * min(count / top, 1.0)  # a single turn still shows
    rgb = "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high, strict=True))
    return f' style="background:#{rgb};color:{"#fff" if t > 0.6 else "#1d2330"}"'


def heat_map(mode: str, table: dict) -> str:
    """The confusion table of one mode as an HTML table shaded by count: row = what the reference
    did, column = what the model did; the diagonal (the right step) green, the rest red."""
    labels, matrix = table.get("labels") or [], table.get("matrix") or []
    counts = [(i == j, c) for i, row in enumerate(matrix) for j, c in enumerate(row)]
    top = {right: max([c for r, c in counts if r == right], default=0) for right in (True, False)}
    head = "".join(f'<th scope="col">{esc(label)}</th>' for label in labels)
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix, strict=True)):
        cells = "".join(
            f'<td data-count="{esc(c)}"{shade(c, top[i == j], i == j)}>{esc(c) if c else ""}</td>'
            for j, c in enumerate(row)
        )
        rows.append(f'<tr><th scope="row">{esc(label)}</th>{cells}</tr>')
    caption = (
        f"What the {mode} model did at each bot turn. Rows: what the reference reply did; columns: what "
        "the model did. Green: the right step (an action's arguments may still be wrong); red: a wrong one."
    )
    return (
        f'<table class="confusion" data-mode="{esc(mode)}"><caption>{esc(caption)}</caption><thead><tr>'
        f'<th scope="col">Expected ↓ taken →</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _label_key(label: str) -> tuple[int, str]:
    return SPECIAL_LABELS.get(label, 0), label


def _accuracy_cell(stats: dict) -> str:
    """'75% (3 of 4)'."""
    return f"{fmt(stats.get('accuracy'), 'pct')} ({stats.get('correct')} of {stats.get('turns')})"


def accuracy_table(modes: list[str], actions: dict) -> str:
    """Per expected step (each action, `handoff`, `no call`), the share of turns each mode got right."""
    labels = sorted({label for m in modes for label in actions.get(m, {}).get("per_action", {})}, key=_label_key)
    head = "".join(f"<th>{esc(m)}</th>" for m in modes)
    rows = []
    for label in labels:
        cells = []
        for mode in modes:
            stats = actions.get(mode, {}).get("per_action", {}).get(label)
            text = DASH if stats is None else _accuracy_cell(stats)
            cells.append(f"<td>{esc(text)}</td>")
        rows.append(f'<tr><th scope="row">{esc(label)}</th>{"".join(cells)}</tr>')
    return (
        "<p>Turns right, by what the reference did: the right action with the right arguments; for handoff, a "
        'handoff; for no call, a plain reply.</p><table class="per-action"><thead><tr><th>Expected</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def classes_table(modes: list[str], actions: dict) -> str:
    """How many turns of each mode fall in each class of action failure, with what the class means."""
    present = {c for m in modes for c in actions.get(m, {}).get("failure_classes", {})}
    classes = [c for c in CLASS_NOTES if c in present] + sorted(present - set(CLASS_NOTES))  # report.json sorts keys
    head = "".join(f"<th>{esc(m)}</th>" for m in modes)
    rows = []
    for name in classes:
        counts = [actions.get(m, {}).get("failure_classes", {}).get(name) for m in modes]
        cells = "".join(f"<td>{esc(fmt(count, 'int'))}</td>" for count in counts)
        rows.append(f'<tr><th scope="row">{esc(name)}</th><td>{esc(CLASS_NOTES.get(name, ""))}</td>{cells}</tr>')
    return (
        f'<table class="classes"><thead><tr><th>Failure</th><th>Meaning</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def actions_section(modes: list[str], actions: dict) -> str:
    """The heat map of the fine-tuned mode (else the last mode), per-action accuracy, failure classes."""
    present = [m for m in modes if m in actions]
    if not present:
        return ""
    shown = "fine-tuned" if "fine-tuned" in present else present[-1]
    return (
        f"<h2>Actions</h2>{heat_map(shown, actions[shown])}<h3>Accuracy per expected step</h3>"
        f"{accuracy_table(modes, actions)}<h3>Action failures</h3>{classes_table(modes, actions)}"
    )


def _failure_heading(f: dict) -> str:
    """A listed failure's heading: the failed expectation or, for a wrong step alone, its class,
    with what was expected and taken."""
    cls = f.get("failure_class")
    if f.get("kind") == "action":
        return (
            f'<h4>{esc(f.get("mode"))}, turn {esc(f.get("turn"))}: <span class="expect">{esc(cls)}</span>'
            f" · expected {esc(f.get('expected'))}, took {esc(f.get('taken'))}</h4>"
        )
    badge = f'<span class="cls">{esc(cls)}</span>' if cls else ""
    return (
        f"<h4>{esc(f.get('mode'))}, turn {esc(f.get('turn'))}: "
        f'<span class="expect">{esc(f.get("expectation"))}</span>{badge}</h4>'
    )


def failures_section(failures: list[dict]) -> str:
    if not failures:
        return "<p>No failed expectations and no wrong actions.</p>"
    groups: dict[str, list[dict]] = {}
    for failure in failures:
        groups.setdefault(str(failure.get("dialogue")), []).append(failure)
    out = []
    for dialogue, items in groups.items():
        tags = list(dict.fromkeys(t for f in items for t in f.get("tags") or []))
        out.append(
            f'<section class="dialogue"><h3>{esc(dialogue)}</h3><p>'
            + "".join(f'<span class="tag">{esc(t)}</span>' for t in tags)
            + "</p>"
        )
        for f in items:
            out.append(_failure_heading(f))
            for message in f.get("context") or []:
                role = str(message.get("role"))
                out.append(
                    f'<div class="turn"><span class="role">{esc(ROLES.get(role, role))}</span>'
                    f"<pre>{esc(message.get('content', ''))}</pre></div>"
                )
            reference = f.get("reference")
            out.append(
                f'<div class="turn"><span class="role">Model reply</span><pre>{esc(f.get("reply", ""))}</pre>'
                f'</div><div class="turn"><span class="role">Reference reply</span>'
                f"<pre>{esc(DASH if reference is None else reference)}</pre></div>"
            )
        out.append("</section>")
    return "".join(out)


def conversations_table(document: dict) -> str:
    modes = document["modes"]
    tries = max((document["summary"][m].get("sampled", {}).get("tries", 1) for m in modes), default=1)
    sampled = next((document["summary"][m]["sampled"] for m in modes if "sampled" in document["summary"][m]), None)
    heads = ["Tests", "Passed", "Pass rate"]
    if sampled:
        heads += [f"pass^{k} (T={sampled['temperature']:g})" for k in range(1, tries + 1)]
    rows = []
    for mode in modes:
        s = document["summary"][mode]
        cells = [str(s["tests"]), str(s["passed"]), fmt(s["pass_rate"], "pct")]
        if sampled:
            cells += [fmt(s.get("sampled", {}).get("pass_hat", {}).get(str(k)), "pct") for k in range(1, tries + 1)]
        rows.append(f'<tr><th scope="row">{esc(mode)}</th>' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    return f'<table class="summary"><thead><tr><th>Mode</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def conversation_tag_table(document: dict) -> str:
    """Greedy pass rate per tag and mode."""
    modes = document["modes"]
    by_tag: dict[str, dict[str, list[bool]]] = {}
    for mode in modes:
        for r in document["runs"][mode]:
            if r["temperature"] == 0.0:
                for tag in r["tags"] or ["(untagged)"]:
                    by_tag.setdefault(tag, {}).setdefault(mode, []).append(r["passed"])
    head = "".join(f"<th>{esc(m)}</th>" for m in modes)
    rows = []
    for tag in sorted(by_tag):
        cells = []
        for mode in modes:
            got = by_tag[tag].get(mode)
            cells.append(f"<td>{esc(f'{sum(got)}/{len(got)}') if got else DASH}</td>")
        rows.append(f'<tr><th scope="row">{esc(tag)}</th>{"".join(cells)}</tr>')
    return f'<table class="tags"><thead><tr><th>Tag</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def conversation_failures(document: dict) -> str:
    """Each failed greedy run, folded: what failed, then the conversation as it went."""
    out = []
    for mode in document["modes"]:
        failed = [r for r in document["runs"][mode] if r["temperature"] == 0.0 and not r["passed"]]
        out.append(f"<h3>{esc(mode)}: {len(failed)} failed</h3>")
        for r in failed:
            reasons = r["failures"] + ([f"error: {r['error']}"] if r.get("error") else [])
            out.append(
                f'<details class="conversation"><summary>{esc(r["test"])} <span class="meta">{esc(r["where"])}'
                "</span></summary><ul>"
                + "".join(f'<li class="expect">{esc(why)}</li>' for why in reasons)
                + f"</ul><pre>{esc(chr(10).join(r['transcript']))}</pre></details>"
            )
    return "".join(out)


def conversations_section(document: dict | None) -> str:
    if not document:
        return ""
    modes = document["modes"]
    chart = bar_chart("pass_rate", "Conversations passed", "pct", modes, document["summary"])
    return (
        "<h2>Whole conversations</h2><p>Each conversation test plays a whole conversation through the reply "
        "policy customers get (greedy), with the actions running; it passes when every assertion holds. "
        "pass^k: the chance that k sampled tries of a test all pass.</p>"
        f'{conversations_table(document)}<div class="charts">{chart}</div>'
        f"<h3>By tag</h3>{conversation_tag_table(document)}{conversation_failures(document)}"
    )


def render_html(report: dict | None, conversations: dict | None = None) -> str:
    """A self-contained HTML page (no external scripts, fonts, images or CSS; inline CSS and inline
    SVG only) for a support lead: the held-out report, and the conversation tests when given."""
    report = report or {
        "model_id": (conversations or {}).get("model_id"),
        "created": (conversations or {}).get("created"),
    }
    modes = list(report.get("modes") or report.get("summary", {}))
    summary, by_tag = report.get("summary", {}), report.get("by_tag", {})
    title = f"Evaluation of model {report.get('model_id') or 'base'}"
    measured = [c for c in CHARTED if any(summary.get(m, {}).get(c[0]) is not None for m in modes)]
    charts = "".join(bar_chart(k, label, kind, modes, summary) for k, label, kind, _ in measured)
    held_out = (
        f"<h2>Summary</h2>{summary_table(modes, summary)}"
        f'<h2>Charts</h2><div class="charts">{charts}</div>'
        f"<h2>By tag</h2>{tag_table(modes, by_tag)}"
        f"{actions_section(modes, report.get('actions') or {})}"
        f"<h2>What went wrong</h2>{failures_section(report.get('failures') or [])}"
        if modes
        else "<p>No held-out evaluation of this model yet: run <code>bot eval</code>.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="meta">Date {esc(report.get("created", DASH))} · '
        f"data hash <code>{esc(report.get('data_hash', DASH))}</code></p><p>{LEGEND}</p>"
        f"{conversations_section(conversations)}{held_out}"
        "</body></html>\n"
    )
