"""`bot tune`'s report as one self-contained HTML page: inline CSS, no scripts, fonts or images.
Every string from the tune document goes through `esc`, so nothing in it can become markup."""

from __future__ import annotations

from typing import Any

from bot.evaluation.report_html import esc
from bot.evaluation.report_html import fmt as report_fmt

CSS = """
body{font:15px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}.meta{color:#5a6272;margin-top:0}
table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #d8dce3;padding:.35em .8em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f1f3f6}
tr.best td{background:#e3f4ea;font-weight:600}
.bar{display:inline-block;height:.7em;background:#3f74b5;vertical-align:middle;margin-left:.4em}
code,pre{font:13px ui-monospace,monospace}pre{background:#f7f8fa;padding:.6em;white-space:pre-wrap}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
"""
SCORES = [  # (key in summarize()'s summary, label, kind)
    ("action_accuracy", "Action accuracy", "pct"),
    ("expectation_pass_rate", "Expectations passed", "pct"),
    ("chrf", "chrF", "num"),
    ("handoff_accuracy", "Handoff accuracy", "pct"),
    ("leaks", "Leaks", "int"),
]


def setting(value: Any) -> str:
    return "null" if value is None else str(value)


def fmt(value: Any, kind: str) -> str:
    """As in the evaluation report, with losses to three places (candidates differ by little)."""
    return f"{value:.3f}" if kind == "loss" and value is not None else report_fmt(value, kind)


def candidates_table(document: dict) -> str:
    keys = list(document["grid"])
    head = "".join(f"<th>{esc(k)}</th>" for k in keys) + "".join(f"<th>{label}</th>" for _, label, _ in SCORES)
    head += "<th>Validation loss</th><th>Train (s)</th><th>Score (s)</th>"
    rows = []
    for c in document["candidates"]:
        cells = "".join(f"<td>{esc(setting(c['settings'].get(k)))}</td>" for k in keys)
        for key, _, kind in SCORES:
            value = c["scores"].get(key)
            has_bar = kind == "pct" and value is not None
            bar = f'<span class="bar" style="width:{value * 4:.1f}em"></span>' if has_bar else ""
            cells += f"<td>{fmt(value, kind)}{bar}</td>"
        loss = fmt(c["validation_loss"], "loss")
        train_s, score_s = fmt(c["train_seconds"], "num"), fmt(c["score_seconds"], "num")
        cells += f"<td>{loss}</td><td>{train_s}</td><td>{score_s}</td>"
        row_class = "best" if c["rank"] == 1 else ""
        rows.append(f'<tr class="{row_class}"><td>{c["rank"]}</td><td>{c["number"]}</td>{cells}</tr>')
    return f"<table><thead><tr><th>Rank</th><th>#</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_tune_html(document: dict) -> str:
    data = document["data"]
    best = document["candidates"][0]
    fixed = document["fixed"]
    if fixed:
        fixed_settings = ", ".join(f"{k}={setting(v)}" for k, v in fixed.items())
        trained_as = f"every candidate trained with {fixed_settings}"
    else:
        trained_as = "each candidate trained as its settings say"
    tried = {k: ", ".join(setting(v) for v in values) for k, values in document["grid"].items()}
    grid = "".join(f"<dt>{esc(k)}</dt><dd>{esc(values)}</dd>" for k, values in tried.items())
    best_settings = "\n".join(f"{k}: {setting(v)}" for k, v in best["settings"].items())
    validation = ", ".join(data["validation_dialogues"])
    created, mode, grid_source = esc(document["created"]), esc(document["mode"]), esc(document["grid_source"])
    device, seconds, tuned_file = esc(document["device"]), fmt(document["seconds"], "num"), esc(document["tuned_file"])
    share, turns = data["validation_share"], data["validation_turns"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bot tune {created}</title>
<style>{CSS}</style></head><body>
<h1>Training settings search</h1>
<p class="meta">{created} &middot; {mode} search ({grid_source}) &middot;
{len(document["candidates"])} candidates &middot; {device} &middot; {seconds} s in all &middot;
base model {esc(document["base_model"])}</p>
<p>Each candidate was trained on {len(data["training_dialogues"])} training dialogues and scored on the
{len(data["validation_dialogues"])} left out of its training ({share:.0%} of the training dialogues, chosen by
a hash of their ids; {turns} bot turns), never on the held-out tests; {esc(trained_as)}. A validation
dialogue passes its expectations when the replies call every action its reference calls, hand off exactly when it does,
and never show the persona's secret. Ranked by {esc(document["ranking"])}.</p>
{candidates_table(document)}
<h2>Best: candidate {best["number"]}</h2>
<pre>{esc(best_settings)}</pre>
<p>Written to <code>{tuned_file}</code>; apply it with <code>bot train --config {tuned_file}</code>
(its <code>train:</code> section is merged over config.yml's).</p>
<h2>Grid</h2><dl>{grid}</dl>
<h2>Validation dialogues</h2><p>{esc(validation)}</p>
</body></html>
"""
