"""What `tracker_store.sqlite_synchronous: full` costs: events stored one by one through
SQLiteStore (WAL mode) with synchronous=NORMAL against FULL, in the same run, on this disk.
Prints the time per event and the ratio; alternates the two settings, `--rounds` times each.

    .venv/bin/python benchmarks/sqlite_synchronous.py [--events 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def per_event_ms(synchronous: str, events: int, folder: Path) -> float:
    from bot.conversations.events import user_message
    from bot.conversations.store import SQLiteStore

    store = SQLiteStore(folder / f"{synchronous}-{time.monotonic_ns()}.sqlite3", synchronous=synchronous)
    try:
        started = time.perf_counter()
        for i in range(events):
            await store.append(f"customer-{i % 20}", user_message("Where is my order? It was due yesterday."))
        return (time.perf_counter() - started) / events * 1000
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"normal": [], "full": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:  # on the disk the project lives on
        for _ in range(args.rounds):
            for synchronous in times:
                times[synchronous].append(await per_event_ms(synchronous, args.events, Path(folder)))
    normal, full = (statistics.median(times[s]) for s in ("normal", "full"))
    print("| synchronous | ms per stored event (median of rounds) |")
    print("|---|---|")
    print(f"| normal | {normal:.2f} |")
    print(f"| full | {full:.2f} |")
    print(f"full / normal: {full / normal:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
