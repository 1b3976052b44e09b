"""`aistack doctor`: what the current cluster lacks for a task to run, each with its fix.

Read-only preflight through the Kubernetes API of a kubeconfig. It answers "why does my task
never start?" before anything is applied: the CRDs at this package's version, Argo's CRDs and
controller, what compiled workflows reference (service account, artifact repository, model-cache
claims), GPU nodes as the steps select and tolerate them, the operator and its permissions
(asked as the operator's ServiceAccount, by impersonation), and a task's agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from aistack.crds.models import GROUP, VERSION, OllamaAgent, TaskOrchestration
from aistack.crds.schema import KINDS, resource_schema
from aistack.operator.kube import CALLS, OWNER_FINALIZERS, _or_none
from aistack.pipelines.compile import GPU_RESOURCE as GPU

OK, WARN, FAIL = "ok", "warn", "FAIL"
# what kopf itself needs besides the operator's own calls (infra/base/operator/rbac.yaml)
KOPF_NEEDS = (
    {
        (GROUP, plural, verb)
        for plural in ("taskorchestrations", "ollamaagents")
        for verb in ("list", "watch", "patch")
    }
    | {(GROUP, f"{p}/status", "patch") for p in ("taskorchestrations", "ollamaagents")}
    | {("", "events", "create")}
)


@dataclass
class Finding:
    check: str
    status: str  # OK, WARN or FAIL
    found: str
    fix: str = ""


@dataclass
class Options:
    namespace: str
    operator_namespace: str = "aistack-system"
    operator_account: str = "aistack-operator"
    task: TaskOrchestration | None = None
    agents: dict[str, OllamaAgent] | None = None


def api_clients(kubeconfig: str | None, impersonate: str) -> tuple[client.ApiClient, client.ApiClient]:
    """A client as the caller, and one that acts as `impersonate` (a username)."""

    def load() -> client.ApiClient:
        try:
            return config.new_client_from_config(config_file=kubeconfig)
        except config.ConfigException:
            if kubeconfig:
                raise
            config.load_incluster_config()
            return client.ApiClient()

    caller, other = load(), load()
    other.set_default_header("Impersonate-User", impersonate)
    return caller, other


class Doctor:
    def __init__(self, caller: client.ApiClient, as_operator: client.ApiClient, options: Options) -> None:
        self.caller, self.as_operator, self.o = caller, as_operator, options
        self.custom = client.CustomObjectsApi(caller)
        self.core, self.apps = client.CoreV1Api(caller), client.AppsV1Api(caller)

    def run(self) -> list[Finding]:
        workflow = self._compiled()
        findings = self.crds() + self.argo()
        findings += self.referenced(workflow) + self.gpu_nodes(workflow) + self.operator() + self.agents()
        return findings

    # ------------------------------------------------------------------ what compiled workflows need

    def _compiled(self) -> dict[str, Any]:
        import aistack.crds
        from aistack.crds.validation import load_file, parse
        from aistack.pipelines.compile import compile_task

        task, agents = self.o.task, self.o.agents
        if task is None:  # the seed example stands for "a task": the same references
            seed = Path(aistack.crds.__file__).parent / "examples" / "seed.yaml"  # package data
            docs = [parse(d) for d in load_file(seed)]
            task = next(d for d in docs if isinstance(d, TaskOrchestration))
            agents = {d.metadata.name: d for d in docs if isinstance(d, OllamaAgent)}
        compiled = compile_task(task, agents or {}, namespace=self.o.namespace).to_dict()
        return compiled.get("spec", {}).get("workflowSpec") or compiled["spec"]

    # ------------------------------------------------------------------ checks

    def _crd(self, name: str) -> dict[str, Any] | None:
        return _or_none(
            self.custom.get_cluster_custom_object,
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            name,
        )

    def crds(self) -> list[Finding]:
        out = []
        for kind, info in KINDS.items():
            name = f"{info['plural']}.{GROUP}"
            crd = self._crd(name)
            if crd is None:
                out.append(Finding(f"CRD {name}", FAIL, "not installed", "kubectl apply -f crds/"))
                continue
            version = next((v for v in crd["spec"].get("versions", []) if v.get("name") == VERSION), None)
            if version is None or not version.get("served"):
                out.append(
                    Finding(
                        f"CRD {name}",
                        FAIL,
                        f"{VERSION} is not served",
                        "kubectl apply -f crds/ (this aistack's)",
                    )
                )
            elif (version.get("schema") or {}).get("openAPIV3Schema") != resource_schema(kind):
                out.append(Finding(f"CRD {name}", FAIL, "its schema is another aistack version's",
                                   "kubectl apply -f crds/ from this aistack, then restart the operator"))  # fmt: skip
            else:
                out.append(Finding(f"CRD {name}", OK, f"{VERSION}, this aistack's schema"))
        return out

    def argo(self) -> list[Finding]:
        out = []
        for plural in ("workflows", "cronworkflows"):
            name = f"{plural}.argoproj.io"
            crd = self._crd(name)
            out.append(Finding(f"Argo CRD {name}", OK, "installed") if crd else
                       Finding(f"Argo CRD {name}", FAIL, "not installed", "install Argo Workflows (infra/base/argo-workflows)"))  # fmt: skip
        controllers = [
            d
            for d in self.apps.list_deployment_for_all_namespaces().items
            if "workflow-controller" in d.metadata.name
        ]
        ready = [d for d in controllers if (d.status.ready_replicas or 0) >= 1]
        if ready:
            d = ready[0]
            out.append(Finding("Argo controller", OK, f"{d.metadata.namespace}/{d.metadata.name} ready"))
        elif controllers:
            d = controllers[0]
            out.append(Finding("Argo controller", FAIL, f"{d.metadata.namespace}/{d.metadata.name} has no ready replica",
                               f"kubectl -n {d.metadata.namespace} describe deployment {d.metadata.name}"))  # fmt: skip
        else:
            out.append(Finding("Argo controller", FAIL, "no workflow-controller Deployment",
                               "install Argo Workflows (infra/base/argo-workflows) and let it watch this namespace"))  # fmt: skip
        return out

    def referenced(self, spec: dict[str, Any]) -> list[Finding]:
        ns, out = self.o.namespace, []
        account = spec.get("serviceAccountName")
        if account:
            found = _or_none(self.core.read_namespaced_service_account, account, ns)
            out.append(Finding(f"ServiceAccount {ns}/{account}", OK, "exists") if found else
                       Finding(f"ServiceAccount {ns}/{account}", FAIL, "missing (workflow pods run as it)",
                               "kubectl apply -k infra/overlays/<env>/controllers (infra/base/argo-workflows/workflow-rbac.yaml)"))  # fmt: skip
        ref = spec.get("artifactRepositoryRef") or {}
        if ref.get("configMap"):
            cm = _or_none(self.core.read_namespaced_config_map, ref["configMap"], ns)
            what = f"artifact repository {ns}/{ref['configMap']}:{ref.get('key')}"
            if cm is None:
                out.append(
                    Finding(
                        what, FAIL, "ConfigMap missing", "kubectl apply -k infra/overlays/<env>/controllers"
                    )
                )
            elif ref.get("key") and ref["key"] not in (cm.data or {}):
                out.append(
                    Finding(
                        what,
                        FAIL,
                        f"no key {ref['key']!r}",
                        f"add {ref['key']} to ConfigMap {ref['configMap']}",
                    )
                )
            else:
                out.append(Finding(what, OK, "exists"))
        claims = sorted({
            v["persistentVolumeClaim"]["claimName"]
            for t in spec.get("templates", []) for v in t.get("volumes") or [] if v.get("persistentVolumeClaim")
        })  # fmt: skip
        for claim in claims:
            pvc = _or_none(self.core.read_namespaced_persistent_volume_claim, claim, ns)
            what = f"model cache {ns}/{claim}"
            if pvc is None:
                out.append(
                    Finding(
                        what,
                        FAIL,
                        "PersistentVolumeClaim missing",
                        "kubectl apply -k infra/overlays/<env>/controllers (infra/base/model-cache)",
                    )
                )
            elif (phase := pvc.status.phase if pvc.status else "unknown") != "Bound":
                out.append(
                    Finding(
                        what,
                        FAIL,
                        f"{phase}, not Bound",
                        f"kubectl -n {ns} describe pvc {claim} (StorageClass, capacity)",
                    )
                )
            else:
                out.append(Finding(what, OK, "Bound"))
        return out

    def gpu_nodes(self, spec: dict[str, Any]) -> list[Finding]:
        wanted = [
            t
            for t in spec.get("templates", [])
            if GPU in str(t.get("sidecars", "")) + str(t.get("container", ""))
        ]
        if not wanted:
            return [Finding("GPU nodes", OK, "the task requests no GPU")]
        selector = wanted[0].get("nodeSelector") or {}
        tolerated = {(t.get("key"), t.get("effect")) for t in wanted[0].get("tolerations") or []}
        nodes = self.core.list_node().items
        gpu = [n for n in nodes if int((n.status.allocatable or {}).get(GPU, "0") or 0) > 0]
        if not gpu:
            return [Finding("GPU nodes", WARN, f"no node has allocatable {GPU} now",
                            "fine if a GPU node group scales from zero; else add GPU nodes and the NVIDIA GPU Operator (infra/base/gpu-operator)")]  # fmt: skip
        total = sum(int(n.status.allocatable[GPU]) for n in gpu)
        out = [Finding("GPU nodes", OK, f"{len(gpu)} node(s), {total} allocatable {GPU}")]
        unlabelled = [
            n.metadata.name for n in gpu if not selector.items() <= (n.metadata.labels or {}).items()
        ]
        label = ", ".join(f"{k}={v}" for k, v in selector.items())
        out.append(
            Finding("GPU node label", FAIL, f"{', '.join(unlabelled)} lack {label}: steps select it",
                    f"kubectl label node {unlabelled[0]} {label} (the GPU Operator's feature discovery sets it)")
            if unlabelled else Finding("GPU node label", OK, f"every GPU node has {label}")
        )  # fmt: skip
        untolerated = [
            f"{n.metadata.name} ({t.key}:{t.effect})"
            for n in gpu for t in n.spec.taints or [] if (t.key, t.effect) not in tolerated
        ]  # fmt: skip
        tainted = [n for n in gpu if any((t.key, t.effect) in tolerated for t in n.spec.taints or [])]
        if untolerated:
            out.append(Finding("GPU node taints", FAIL, f"steps do not tolerate {', '.join(untolerated)}",
                               "remove that taint, or set the agent's spec.tolerations"))  # fmt: skip
        elif len(tainted) < len(gpu):
            out.append(Finding("GPU node taints", WARN, f"{len(gpu) - len(tainted)} GPU node(s) untainted: any pod may take them",
                               f"kubectl taint node NAME {GPU}=present:NoSchedule"))  # fmt: skip
        else:
            out.append(Finding("GPU node taints", OK, f"tainted {GPU}, which steps tolerate"))
        return out

    def operator(self) -> list[Finding]:
        ns, name = self.o.operator_namespace, self.o.operator_account
        out = []
        deployment = _or_none(self.apps.read_namespaced_deployment, name, ns)
        if deployment is None:
            out.append(
                Finding(
                    "operator",
                    FAIL,
                    f"no Deployment {ns}/{name}",
                    "kubectl apply -k infra/base/namespaces; kubectl apply -k infra/base/operator",
                )
            )
        elif (deployment.status.ready_replicas or 0) < 1:
            out.append(
                Finding(
                    "operator",
                    FAIL,
                    f"{ns}/{name} has no ready replica",
                    f"kubectl -n {ns} logs deployment/{name}",
                )
            )
        else:
            out.append(Finding("operator", OK, f"{ns}/{name} ready"))
        needed = sorted(CALLS | OWNER_FINALIZERS | KOPF_NEEDS)
        reviews = client.AuthorizationV1Api(self.as_operator)
        denied = []
        for group, resource, verb in needed:
            plural, _, sub = resource.partition("/")
            attributes = {"group": group, "resource": plural, "verb": verb, "namespace": self.o.namespace}
            if sub:
                attributes["subresource"] = sub
            try:
                review = reviews.create_self_subject_access_review(
                    {"spec": {"resourceAttributes": attributes}}
                )
            except ApiException as exc:
                if exc.status in (401, 403):
                    return [*out, Finding("operator RBAC", WARN, f"you may not impersonate system:serviceaccount:{ns}:{name}",
                                          "run aistack doctor as a cluster admin (it needs impersonate on serviceaccounts)")]  # fmt: skip
                raise
            if not (review.status and review.status.allowed):
                denied.append(f"{verb} {resource}{'.' + group if group else ''}")
        out.append(
            Finding("operator RBAC", FAIL, f"system:serviceaccount:{ns}:{name} may not: {', '.join(denied)}",
                    "kubectl apply -k infra/base/operator (its ClusterRole is what the code calls)")
            if denied else Finding("operator RBAC", OK, f"all {len(needed)} permissions the code needs, in {self.o.namespace}")
        )  # fmt: skip
        return out

    def agents(self) -> list[Finding]:
        if self.o.task is None:
            return []
        out = []
        for ref in self.o.task.spec.agent_refs():
            agent = _or_none(
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.o.namespace,
                "ollamaagents",
                ref,
            )
            what = f"OllamaAgent {self.o.namespace}/{ref}"
            if agent is None:
                out.append(
                    Finding(
                        what,
                        FAIL,
                        "missing",
                        f"kubectl -n {self.o.namespace} apply -f agents.yaml (one named {ref})",
                    )
                )
                continue
            status = agent.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            out.append(Finding(what, OK, "Ready") if ready else
                       Finding(what, FAIL, f"not Ready: {status.get('message') or status.get('phase') or 'no status (is the operator running?)'}",
                               f"kubectl -n {self.o.namespace} describe oagent {ref}"))  # fmt: skip
        return out


def diagnose(kubeconfig: str | None, options: Options) -> list[Finding]:
    account = f"system:serviceaccount:{options.operator_namespace}:{options.operator_account}"
    caller, as_operator = api_clients(kubeconfig, account)
    return Doctor(caller, as_operator, options).run()


def default_namespace(kubeconfig: str | None) -> str:
    """The kubeconfig context's namespace, as kubectl uses it."""
    try:
        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
        return (current or {}).get("context", {}).get("namespace") or "default"
    except (config.ConfigException, OSError):
        return "default"
