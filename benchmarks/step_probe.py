"""Run one step function of aistack.pipelines.runtime in this process, as its pod would, counting the
S3 requests and bytes it makes (botocore event hooks on the process's one client) and its own peak
RSS; prints JSON.

    python benchmarks/step_probe.py STEP '{"target": ..., "workflow": ...}'

benchmarks/scale.py runs every step through it, in a process of its own.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections import Counter
from typing import Any


def main() -> None:
    step, arguments = sys.argv[1], json.loads(sys.argv[2])
    from aistack.etl import storage
    from aistack.pipelines import runtime

    operations: Counter[str] = Counter()
    by_area: Counter[str] = Counter()  # requests by the part of the run they touch
    got: Counter[str] = Counter()  # GetObject bytes by area

    def area(key: str) -> str:
        for name in ("/cache/", "/chunks/", "/stages/", "/etl/", "/corpus"):
            if name in f"/{key}":
                return name.strip("/")
        return "other"

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["probe_key"] = params.get("Key") or params.get("Prefix") or ""

    def after(model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        key = context.get("probe_key", "")
        operations[model.name] += 1
        by_area[area(key)] += 1
        if model.name == "GetObject":
            got[area(key)] += int(parsed.get("ContentLength", 0))

    client = storage.s3_client()
    client.meta.events.register("before-parameter-build.s3", before)
    client.meta.events.register("after-call.s3", after)
    started = time.perf_counter()
    result = inspect.unwrap(getattr(runtime, step))(**arguments)
    print(json.dumps({"result": result, "seconds": time.perf_counter() - started, "rss_mb": peak_rss_mb(),
                      "operations": operations, "requests_by_area": by_area, "get_bytes_by_area": got}))  # fmt: skip


def peak_rss_mb() -> float:
    """This process's own peak RSS since it started: VmHWM. (getrusage's ru_maxrss would include the
    parent's RSS at the fork, which Linux carries over the exec.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
