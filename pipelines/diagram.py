"""Graphviz DOT of a compiled workflow's DAG (docs/orchestration-diagram.png is rendered from it)."""

from __future__ import annotations

from hera.workflows import CronWorkflow, Workflow

_KIND = {
    "plan": ("plan\\n(list the input, cut it\\ninto partitions)", "#e0e7ff"),
    "ingest": ("ingest + clean + chunk\\n(tiktoken, Parquet)\\nwithParam: one pod per partition", "#dbeafe"),
    "etl": ("etl\\n(one dataset; map shards\\nof whole row groups)", "#e0e7ff"),
    "publish": ("publish\\n(outputTarget)", "#dcfce7"),
}


def to_dot(wf: Workflow | CronWorkflow) -> str:
    built = wf.build()
    spec = built.spec.workflow_spec if isinstance(wf, CronWorkflow) else built.spec
    templates = {t.name: t for t in spec.templates}
    dag = templates[spec.entrypoint].dag
    lines = [
        f'digraph "{built.metadata.name or built.metadata.generate_name}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
    ]
    for task in dag.tasks:
        template = templates[task.template]
        label, color = _KIND.get(task.name, (task.name, "#fef3c7"))
        if task.name not in _KIND:
            sidecars = template.sidecars or []
            limits = (sidecars[0].resources.limits or {}) if sidecars and sidecars[0].resources else {}
            gpu = limits.get("nvidia.com/gpu")
            where = f"GPU x{getattr(gpu, 'root', gpu)}" if gpu else "CPU"
            side = f"\\nsidecar: {sidecars[0].image}" if sidecars else ""
            fan = "\\nwithParam: one pod per shard" if task.with_param else ""
            label = f"stage {task.name}\\n({where}){side}{fan}"
        lines.append(f'  "{task.name}" [label="{label}", fillcolor="{color}"];')
    for task in dag.tasks:
        for dep in [d.strip() for d in (task.depends or "").split("&&") if d.strip()]:
            lines.append(f'  "{dep}" -> "{task.name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
