"""infra/cluster-iac: the Terraform parses (python-hcl2), pins its versions, declares what the docs
promise (GPU node group and taint, IRSA, a private encrypted bucket) and is laid out as
terraform fmt would."""

from __future__ import annotations

import re
from typing import Any

from infra_tools import INFRA

EXACT_VERSION = re.compile(r"v?\d+\.\d+\.\d+")


def terraform() -> dict[str, Any]:
    import hcl2

    merged: dict[str, Any] = {}
    for path in sorted((INFRA / "cluster-iac").glob("*.tf")):
        with path.open() as f:
            for key, blocks in hcl2.load(f).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def _block(tf: dict[str, Any], kind: str, type_: str, name: str | None = None) -> dict[str, Any]:
    for block in tf[kind]:
        for key, body in block.items():
            if unquote(key) == type_:
                if name is None:
                    return body
                for k2, b2 in body.items():
                    if unquote(k2) == name:
                        return b2
    raise KeyError(f"{kind} {type_} {name}")


def test_terraform_declares_the_gpu_cluster() -> None:
    tf = terraform()
    providers = tf["terraform"][0]["required_providers"][0]
    assert EXACT_VERSION.fullmatch(unquote(providers["aws"]["version"]))
    for name in ("eks", "vpc"):
        assert EXACT_VERSION.fullmatch(unquote(_block(tf, "module", name)["version"]))
    groups = _block(tf, "module", "eks")["eks_managed_node_groups"]
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert unquote(gpu["ami_type"]).endswith("NVIDIA")
    assert [(unquote(t["key"]), unquote(t["effect"])) for t in gpu["taints"].values()] == [
        ("nvidia.com/gpu", "NO_SCHEDULE")
    ]
    assert gpu["labels"] == {'"nvidia.com/gpu.present"': '"true"'} or gpu["labels"] == {
        "nvidia.com/gpu.present": '"true"'
    }
    assert "taints" not in groups["cpu"]
    assert _block(tf, "module", "eks")["enable_irsa"] is True


def test_terraform_bucket_is_private_encrypted_and_scoped() -> None:
    tf = terraform()
    block = _block(tf, "resource", "aws_s3_bucket_public_access_block", "results")
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    sse = _block(tf, "resource", "aws_s3_bucket_server_side_encryption_configuration", "results")
    assert unquote(sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"]) == "aws:kms"
    policy = _block(tf, "data", "aws_iam_policy_document", "results_bucket")["statement"][0]
    assert unquote(policy["effect"]) == "Deny" and policy["condition"][0]["values"] == ['"false"']
    # IRSA: the workflow role trusts exactly the workflow service account, and its S3 rights name only the bucket
    local_blocks = [b for b in tf["locals"] if "irsa" in b]
    assert unquote(local_blocks[0]["irsa"]["workflow"]) == "system:serviceaccount:aistack:aistack-workflow"
    for document in ("results_read_write", "results_read"):
        for statement in _block(tf, "data", "aws_iam_policy_document", document)["statement"]:
            for resource in statement["resources"]:
                assert "aws_s3_bucket.results.arn" in resource or "aws_kms_key.data.arn" in resource, resource


def terraform_fmt_problems(name: str, text: str) -> list[str]:
    """terraform fmt's layout (no terraform binary can be had here): two-space indentation, one
    level per line that opens brackets; no trailing spaces; the `=` of one-line arguments on
    consecutive lines aligned (as hclwrite does: a line that opens a multi-line value, a comment
    or a blank line ends the run)."""
    problems, depth, runs = [], 0, []  # runs: [[(line number, column of "=")]]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        closing = stripped.startswith(("}", "]", ")"))
        if stripped and not stripped.startswith("#") and line != " " * 2 * (depth - closing) + stripped:
            problems.append(f"{name}:{number}: indentation")
        if line.endswith(" "):
            problems.append(f"{name}:{number}: trailing space")
        rhs = line.split("=", 1)[1] if "=" in line else ""
        one_line = sum(rhs.count(c) for c in "{[(") == sum(rhs.count(c) for c in "}])")
        if re.match(r"^\s*[\w\"./-]+\s*= ", line) and one_line:
            if runs and runs[-1][-1][0] == number - 1:
                runs[-1].append((number, line.index("=")))
            else:
                runs.append([(number, line.index("="))])
        net = sum(stripped.count(c) for c in "{[(") - sum(stripped.count(c) for c in "}])")
        depth += (net > 0) - (net < 0)
    return problems + [
        f"{name}:{r[0][0]}-{r[-1][0]}: '=' not aligned" for r in runs if len({c for _, c in r}) > 1
    ]


def test_terraform_is_formatted() -> None:
    problems = [
        p
        for path in sorted((INFRA / "cluster-iac").glob("*.tf"))
        for p in terraform_fmt_problems(path.name, path.read_text())
    ]
    assert problems == []
    bad = 'resource "x" "y" {\n  a = 1\n  bbb = 2\n   c = {\n  }\n}\n'
    assert terraform_fmt_problems("bad.tf", bad) == ["bad.tf:4: indentation", "bad.tf:2-3: '=' not aligned"]
