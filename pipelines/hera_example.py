"""A pipeline written as ordinary Hera code with aistack's step templates.

This is the "Python way in": the same steps `compile_task` uses, wired by hand. It plans and
ingests the bundled Python tutorial (one pod per partition), answers a question on every shard
of chunks with an agent reached at an Ollama Service, and publishes. The task travels as
`RunSpec.encode()` (compressed, base64: Argo never substitutes inside it) and is read by the
`plan` step only. Print it with:

    python -m aistack.pipelines.hera_example > workflow.yaml   # then: argo submit workflow.yaml
"""

from __future__ import annotations

from hera.workflows import DAG, Parameter, Workflow

from aistack.crds.models import OllamaAgentSpec, TaskOrchestrationSpec
from aistack.pipelines.compile import step_template
from aistack.pipelines.run_spec import RunSpec, as_parameters

TASK = TaskOrchestrationSpec.model_validate(
    {
        "input": {"dataset": "python-docs", "include": "tutorial/*.html"},
        "question": "How do you create a virtual environment?",
        "pipeline": [{"agentRef": "qna", "name": "answer"}],
        "outputTarget": "s3://ai-results/hera-example/",
    }
)
AGENTS = {"qna": OllamaAgentSpec.model_validate({"model": "llama3.1:8b", "role": "qna", "numParallel": 4})}


def build() -> Workflow:
    p = "{{workflow.parameters.%s}}"
    parameters = as_parameters(RunSpec(TASK, AGENTS), TASK.output_target)
    with Workflow(
        generate_name="hera-qna-",
        entrypoint="main",
        arguments=[Parameter(name=k, value=v) for k, v in parameters.items()],
    ) as wf:
        plan = step_template("plan", "plan")
        ingest = step_template("ingest", "ingest")
        etl = step_template("etl", "etl")
        answer = step_template("answer", "stage", env={"OLLAMA_HOST": "http://ollama.aistack.svc:11434"})
        publish = step_template("publish", "publish")
        with DAG(name="main"):
            run = {"target": p % "target", "workflow": "{{workflow.name}}"}
            a = plan(arguments={"spec": p % "spec", **run})
            b = ingest(arguments={**run, "partition": "{{item}}"}, with_param=a.result)
            c = etl(arguments=run)
            d = answer(
                arguments={
                    **run,
                    "stage_name": "answer",
                    "shard": "{{item.shard}}",
                    "shard_count": "{{item.count}}",
                },
                with_param=c.result,
            )
            e = publish(arguments=run)
            a >> b >> c >> d >> e
    return wf


if __name__ == "__main__":
    print(build().to_yaml())
