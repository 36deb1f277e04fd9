"""What more transcripts buy: train on 25%, 50% and 100% of the training dialogues (default
settings) and score each fine-tuned model on the held-out dialogues, against the zero-shot base
model (no training data) in the same run. Prints a table with the ratio to zero-shot and writes
results/learning_curve.svg (chrF and adversarial pass rate against data size) and .json.

    .venv/bin/python benchmarks/learning_curve.py [--fractions 0.25,0.5,1.0]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def subset_project(fraction: float, seed: int) -> Path:
    """A copy of the project whose training dialogues are a random `fraction` of the real ones."""
    from bot.data.loader import yaml_files
    from bot.yamlsource import load

    project = Path(tempfile.mkdtemp(prefix=f"curve-{fraction}-"))
    shutil.copytree(ROOT / "training_data", project / "training_data", ignore=shutil.ignore_patterns("dialogues"))
    shutil.copy(ROOT / "config.yml", project / "config.yml")
    files = yaml_files(ROOT / "training_data" / "dialogues")
    dialogues = [d for f in files for d in load(f, f.name).value["dialogues"]]
    chosen = random.Random(seed).sample(dialogues, max(1, round(len(dialogues) * fraction)))
    (project / "training_data" / "dialogues").mkdir()
    (project / "training_data" / "dialogues" / "subset.yml").write_text(
        yaml.safe_dump({"dialogues": chosen}, allow_unicode=True)
    )
    return project


def svg_chart(points: list[dict], zero_shot: dict) -> str:
    """Two lines against the number of training dialogues; dashed: zero-shot."""
    width, height, left, bottom = 560, 300, 50, 40
    xs = [p["dialogues"] for p in points]
    x_max = max(xs)

    def x(v):
        return left + (width - left - 20) * v / x_max

    def y(v):  # both series as percentages, 0-100
        return height - bottom - (height - bottom - 20) * v / 100

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">'
    ]
    parts.append(f'<line x1="{left}" y1="{y(0)}" x2="{width - 20}" y2="{y(0)}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(100)}" stroke="#333"/>')
    for tick in (0, 25, 50, 75, 100):
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4}" text-anchor="end">{tick}</text>')
    for v in xs:
        parts.append(f'<text x="{x(v)}" y="{height - bottom + 16}" text-anchor="middle">{v}</text>')
    parts.append(f'<text x="{(width + left) / 2}" y="{height - 6}" text-anchor="middle">training dialogues</text>')
    for key, colour, label in (("chrf", "#1f8a5b", "chrF"), ("adversarial", "#b5773f", "adversarial passed %")):
        line = " ".join(f"{x(p['dialogues'])},{y(p[key])}" for p in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        parts += [f'<circle cx="{x(p["dialogues"])}" cy="{y(p[key])}" r="4" fill="{colour}"/>' for p in points]
        parts.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y(zero_shot[key])}" y2="{y(zero_shot[key])}" '
            f'stroke="{colour}" stroke-dasharray="5,4"/>'
        )
        parts.append(
            f'<text x="{x(xs[-1]) - 4}" y="{y(points[-1][key]) - 8}" text-anchor="end" fill="{colour}">{label}</text>'
        )
    parts.append(f'<text x="{left + 6}" y="16">dashed: zero-shot base model (no training data)</text></svg>')
    return "\n".join(parts)


def main() -> None:
    from bot.config import load_settings
    from bot.evaluation.run import evaluate
    from bot.pipelines.train import train_and_activate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", default="0.25,0.5,1.0")
    args = parser.parse_args()

    def scores(summary: dict) -> dict:
        return {"chrf": summary["chrf"], "adversarial": 100 * (summary["adversarial_pass_rate"] or 0.0)}

    base_report, _ = evaluate(load_settings(subset_project(1.0, seed=0)), modes=("zero-shot",), progress_bar=False)
    zero_shot = scores(base_report["summary"]["zero-shot"])
    points = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        settings = load_settings(subset_project(fraction, seed=0))
        outcome = train_and_activate(settings, force=True, progress_bar=False)
        report = json.loads((outcome.report_dir / "report.json").read_text())
        point = {
            "fraction": fraction,
            "dialogues": len(json.loads((settings.build_dir / "index.json").read_text())["train"]),
        }
        point.update(scores(report["summary"]["fine-tuned"]))
        point["train_seconds"] = outcome.model.manifest["training"]["seconds"]
        points.append(point)
        print(f"{fraction:.0%}: {point}", flush=True)

    print(f"\n{'training dialogues':>18}{'chrF':>8}{'x zero-shot':>13}{'adversarial':>13}{'train s':>9}")
    print(f"{'0 (zero-shot)':>18}{zero_shot['chrf']:>8.1f}{1:>12.2f}x{zero_shot['adversarial']:>12.0f}%{'-':>9}")
    for p in points:
        ratio = p["chrf"] / zero_shot["chrf"] if zero_shot["chrf"] else float("inf")
        print(
            f"{p['dialogues']:>18}{p['chrf']:>8.1f}{ratio:>12.2f}x{p['adversarial']:>12.0f}%{p['train_seconds']:>9.0f}"
        )
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps({"zero_shot": zero_shot, "points": points}, indent=2))
    (out / "learning_curve.svg").write_text(svg_chart(points, zero_shot))
    print(f"wrote {out / 'learning_curve.svg'}")


if __name__ == "__main__":
    main()
