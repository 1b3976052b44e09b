"""A pipeline written as ordinary Hera code with aistack's step templates.

This is the "Python way in": the same steps `compile_task` uses, wired by hand. It ingests the
bundled Python docs, answers a question on every shard of chunks with a CPU agent served by
the embedded engine in a sidecar, and publishes. Print it with:

    python -m aistack.pipelines.hera_example > workflow.yaml   # then: argo submit workflow.yaml
"""

from __future__ import annotations

import json

from hera.workflows import DAG, Parameter, Workflow

from aistack.crds.models import OllamaAgentSpec, TaskOrchestrationSpec
from aistack.pipelines.compile import step_template

TASK = TaskOrchestrationSpec.model_validate(
    {
        "input": {"dataset": "python-docs", "include": "tutorial/*.html"},
        "question": "How do you create a virtual environment?",
        "pipeline": [{"agentRef": "qna", "name": "answer"}],
        "outputTarget": "s3://ai-results/hera-example/",
    }
)
AGENTS = {
    "qna": OllamaAgentSpec.model_validate({"model": "aistack-extractive", "role": "qna", "numParallel": 4})
}


def build() -> Workflow:
    p = "{{workflow.parameters.%s}}"
    with Workflow(
        generate_name="hera-qna-",
        entrypoint="main",
        arguments=[
            Parameter(name="task", value=TASK.model_dump_json(by_alias=True, exclude_none=True)),
            Parameter(
                name="agents",
                value=json.dumps({n: a.model_dump(mode="json", by_alias=True) for n, a in AGENTS.items()}),
            ),
            Parameter(name="run-uri", value="s3://ai-results/hera-example/runs/{{workflow.name}}"),
        ],
    ) as wf:
        ingest = step_template("ingest", "ingest")
        shards = step_template("shards", "shards")
        answer = step_template("answer", "stage", env={"OLLAMA_HOST": "http://ollama.aistack.svc:11434"})
        publish = step_template("publish", "publish")
        with DAG(name="main"):
            common = {"task": p % "task", "run_uri": p % "run-uri"}
            a = ingest(arguments=common)
            b = shards(arguments=common)
            c = answer(
                arguments={
                    **common,
                    "agents": p % "agents",
                    "stage_name": "answer",
                    "shard": "{{item.shard}}",
                    "shard_count": "{{item.count}}",
                },
                with_param=b.result,
            )
            d = publish(arguments={**common, "run_id": "{{workflow.name}}"})
            a >> b >> c >> d
    return wf


if __name__ == "__main__":
    print(build().to_yaml())
