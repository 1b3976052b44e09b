"""Compile speed: a TaskOrchestration with a 1,000-shard fan-out against a 1-shard one.

The fan-out is one `withParam` over the shards' list, so the compiled Workflow and the time
to build it do not grow with the shard count (or the corpus). Prints seconds per compile,
the ratio between the two, and the YAML sizes.

    python benchmarks/compile_speed.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from aistack.pipelines.compile import compile_task
from aistack.pipelines.local import load_task

ROOT = Path(__file__).resolve().parents[1]


def timed(task, agents, repeat: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    best, size = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        text = compile_task(task, agents, name="bench").to_yaml()
        best = min(best, time.perf_counter() - started)
        size = len(text.encode())
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    task, agents = load_task(ROOT / "examples" / "question-answering" / "task.yaml")
    one = task.model_copy(deep=True)
    one.spec.max_shards = 1
    wide = task.model_copy(deep=True)
    wide.spec.max_shards = 1000
    t1, s1 = timed(one, agents, args.repeat)
    t1000, s1000 = timed(wide, agents, args.repeat)
    print(f"1 shard:     {t1 * 1000:7.1f} ms per compile, {s1:,} bytes of YAML")
    print(f"1000 shards: {t1000 * 1000:7.1f} ms per compile, {s1000:,} bytes of YAML")
    print(f"ratio 1000-shard / 1-shard compile time: {t1000 / t1:.2f}x (target: well under a second, ~1x)")


if __name__ == "__main__":
    main()
