"""Scale: every step's memory and I/O proportional to its own share, measured as Argo would run them.

Synthetic corpora are made from the bundled docs (JSONL files, so the planner cuts them by byte
range) at about 100 MB and 1 GB (10 GB with --big) and put on an S3-compatible server on 127.0.0.1
(moto). The compiled steps then run as separate processes, one per pod (benchmarks/step_probe.py
counts each one's S3 requests and bytes; the parent reads its peak RSS): plan, the ingest
partitions, etl, one map shard, the same shard again over a full cache, a reduce, publish. The
agents are the embedded extractive engine (`aistack models serve`), so models are not the cost.

Targets (printed as ratios):
- peak RSS of each step at 1 GB <= 1.2 x its peak at 100 MB;
- bytes one map shard reads <= 1.2 x (the chunks table / shards);
- storage requests of a fully cached map re-run <= 1 per 1,000 records;
- ingest: P partitions at once against one partition alone (this machine has only 2 cores).
Also: the compiled Workflow's size for 10 chunks and for 10 million.

    python benchmarks/scale.py [--sizes 100,1024] [--big] [--shards 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "step_probe.py"
BUCKET = "scale-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def records_from_docs() -> list[str]:
    """The bundled HOWTOs in pieces of about 3 KB: the text the corpora repeat."""
    pieces: list[str] = []
    for path in sorted((ROOT / "datasets" / "python-docs" / "howto").glob("*.txt")):
        text = path.read_text()
        pieces += [text[i : i + 3000] for i in range(0, len(text), 3000)]
    return pieces


def upload_corpus(client: Any, prefix: str, megabytes: int, files: int = 8) -> int:
    """`files` JSONL objects adding up to about `megabytes`; each line is a distinct record. Written
    to a temporary file and uploaded from it, so this process stays small."""
    pieces = records_from_docs()
    per_file = megabytes * 2**20 // files
    total, n = 0, 0
    for f in range(files):
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
            size = 0
            while size < per_file:
                line = json.dumps({"text": f"Copy {n}. {pieces[n % len(pieces)]}"}).encode() + b"\n"
                tmp.write(line)
                size += len(line)
                n += 1
            tmp.flush()
            client.upload_file(tmp.name, BUCKET, f"{prefix}/part-{f:02d}.jsonl")
        total += size
    return total


def task_spec(corpus: str, output: str, shards: int) -> Any:
    from aistack.crds.models import OllamaAgentSpec, TaskOrchestrationSpec
    from aistack.pipelines.run_spec import RunSpec

    task = TaskOrchestrationSpec.model_validate(
        {"input": {"uri": corpus}, "chunking": {"maxTokens": 512, "overlapTokens": 0},
         "pipeline": [{"agentRef": "summarizer", "name": "summaries", "mode": "map"},
                      {"agentRef": "summarizer", "name": "digest", "mode": "reduce"}],
         "outputTarget": output, "maxShards": shards, "errorBudgetPercent": 0,
         "cache": {"uri": f"{output.rstrip('/')}/cache"}}
    )  # fmt: skip
    agent = OllamaAgentSpec.model_validate(
        {"model": "aistack-extractive", "role": "summarizer", "numParallel": 4}
    )
    return RunSpec(task, {"summarizer": agent})


class Steps:
    """Runs steps as processes, with the S3 endpoint and model server of the benchmark."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def start(self, step: str, **arguments: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(PROBE), step, json.dumps(arguments)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    @staticmethod
    def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"step failed ({process.returncode}): {err[-3000:]}")
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def run(self, step: str, **arguments: Any) -> dict[str, Any]:
        return self.finish(self.start(step, **arguments))


def measure(steps: Steps, client: Any, megabytes: int, shards: int) -> dict[str, Any]:
    from aistack.pipelines.run_spec import encode_text

    corpus = f"s3://{BUCKET}/corpus-{megabytes}"
    t = time.perf_counter()
    size = upload_corpus(client, f"corpus-{megabytes}", megabytes)
    print(
        f"  corpus: {size / 2**20:,.0f} MB in 8 JSONL objects ({time.perf_counter() - t:.0f} s to upload)",
        flush=True,
    )
    output = f"s3://{BUCKET}/out-{megabytes}"
    spec = task_spec(corpus, output, shards)
    target, workflow = encode_text(output), f"scale-{megabytes}-{uuid.uuid4().hex[:5]}"
    run = {"target": target, "workflow": workflow}
    found: dict[str, Any] = {"bytes": size}
    plan = steps.run("plan", spec=spec.encode(), **run)
    partitions = json.loads(plan["result"])
    found["plan"] = plan
    alone = steps.run("ingest", partition=partitions[0], **run)  # one partition with the machine to itself
    started = time.perf_counter()
    together = [steps.start("ingest", partition=p, **run) for p in partitions]
    reports = [steps.finish(p) for p in together]
    found["ingest"] = {"partitions": len(partitions), "alone_s": alone["seconds"], "together_s": time.perf_counter() - started,
                       "rss_mb": max(r["rss_mb"] for r in [alone, *reports])}  # fmt: skip
    etl = steps.run("etl", **run)
    found["etl"] = etl
    count = len(json.loads(etl["result"]))
    shard = {"stage_name": "summaries", "shard": 0, "shard_count": count, **run}
    found["map"] = steps.run("stage", **shard)
    found["map"]["shards"] = count
    # the same shard again over a full cache: its result parts removed, so every record is looked up
    stage_prefix = f"out-{megabytes}/runs/{workflow}/stages/summaries/shard-0/"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=stage_prefix).get("Contents", [])
    for obj in listed:
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    found["cached"] = steps.run("stage", **shard)
    found["reduce"] = steps.run("stage", stage_name="digest", shard=0, shard_count=1, **run)
    found["publish"] = steps.run("publish", **run)
    chunks_bytes = 0
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"out-{megabytes}/runs/{workflow}/etl/"
    )
    for page in pages:
        chunks_bytes += sum(o["Size"] for o in page.get("Contents", []) if "/chunks/" in o["Key"])
    found["chunks_bytes"] = chunks_bytes
    return found


def workflow_sizes() -> tuple[int, int]:
    """The compiled Workflow for 10 chunks and for 10 million: the same object but for the input URI."""
    from aistack.crds.models import TaskOrchestration
    from aistack.pipelines.compile import compile_task
    from aistack.pipelines.local import load_task

    _, agents = load_task(ROOT / "examples" / "question-answering" / "task.yaml")
    sizes = []
    for uri in ("s3://corpus/ten-chunks/", "s3://corpus/ten-million-chunks/"):
        task = TaskOrchestration.model_validate(
            {"metadata": {"name": "scale"},
             "spec": {"input": {"uri": uri}, "question": "Q?", "pipeline": [{"agentRef": "qna-agent", "mode": "map"}],
                      "outputTarget": "s3://out/x/", "maxShards": 1000}}
        )  # fmt: skip
        sizes.append(len(compile_task(task, agents).to_yaml().encode()))
    return sizes[0], sizes[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024", help="corpus sizes in MB")
    parser.add_argument("--big", action="store_true", help="also 10 GB")
    parser.add_argument("--shards", type=int, default=16, help="maxShards of the task")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([10240] if args.big else [])
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    model_port = free_port()
    models = subprocess.Popen(
        [sys.executable, "-m", "aistack", "models", "serve", "--port", str(model_port), "--parallel", "4",
         "--stand-in", "extractive"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "OLLAMA_HOST": f"http://127.0.0.1:{model_port}", "AISTACK_MODEL_WAIT_SECONDS": "60"}  # fmt: skip
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        wait_for(f"http://127.0.0.1:{port}")
        wait_for(f"http://127.0.0.1:{model_port}")
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        steps = Steps(env)
        results = {}
        for mb in sizes:
            print(f"{mb} MB:", flush=True)
            results[mb] = found = measure(steps, client, mb, args.shards)
            m = found["map"]
            print(f"  plan {found['plan']['seconds']:.1f} s, {found['ingest']['partitions']} partitions; ingest one alone "
                  f"{found['ingest']['alone_s']:.1f} s, all at once {found['ingest']['together_s']:.1f} s; "
                  f"map shard 1 of {m['shards']}: {m['seconds']:.1f} s", flush=True)  # fmt: skip
            report(found)
        small, large = sizes[0], sizes[1] if len(sizes) > 1 else sizes[0]
        print(f"\npeak RSS, {large} MB against {small} MB (target <= 1.20x):")
        for step in ("plan", "ingest", "etl", "map", "cached", "reduce", "publish"):
            a, b = results[small][step]["rss_mb"], results[large][step]["rss_mb"]
            print(f"  {step:8s} {a:7.0f} MB -> {b:7.0f} MB   {b / a:.2f}x")
        ten, ten_million = workflow_sizes()
        print(f"\ncompiled Workflow: {ten:,} bytes for 10 chunks, {ten_million:,} bytes for 10 million "
              f"({ten_million / ten:.3f}x)")  # fmt: skip
    finally:
        models.terminate()
        moto.terminate()
        models.wait(timeout=30)
        moto.wait(timeout=30)


def report(found: dict[str, Any]) -> None:
    m, cached = found["map"], found["cached"]
    share = found["chunks_bytes"] / m["shards"]
    read = m["get_bytes_by_area"].get("chunks", 0)
    rows = json.loads(m["result"])["rows"]
    cache_requests = cached["requests_by_area"].get("cache", 0)
    ingest = found["ingest"]
    print(f"  map shard read {read / 2**20:.1f} MB of chunks, its share is {share / 2**20:.1f} MB: "
          f"{read / share:.2f}x (target <= 1.20x)")  # fmt: skip
    print(f"  cached re-run: {json.loads(cached['result'])['cached']:,} of {rows:,} records from the cache, "
          f"{cache_requests} cache requests = {1000 * cache_requests / max(1, rows):.2f} per 1,000 records "
          f"(target <= 1)")  # fmt: skip
    p = ingest["partitions"]
    print(f"  ingest: {p} partitions at once took {ingest['together_s'] / (p * ingest['alone_s']):.2f}x of "
          f"{p} x one alone (ideal 1/P = {1 / p:.2f} with P cores; this machine has 2)")  # fmt: skip


if __name__ == "__main__":
    main()
