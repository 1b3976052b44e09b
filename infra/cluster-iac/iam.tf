# IRSA: Kubernetes service accounts assume these roles through the cluster's OIDC provider.
locals {
  oidc_issuer = module.eks.oidc_provider
  irsa = {
    # workflow pods (serviceAccountName: aistack-workflow): read and write the results bucket
    workflow = "system:serviceaccount:aistack:aistack-workflow"
    # the gateway: reads a finished run's summary to show its answers. The operator has no AWS
    # role: it talks only to the Kubernetes API server (its NetworkPolicy allows nothing else).
    gateway = "system:serviceaccount:aistack-system:aistack-gateway"
    efs_csi = "system:serviceaccount:kube-system:efs-csi-controller-sa"
  }
}

data "aws_iam_policy_document" "irsa_trust" {
  for_each = local.irsa
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [module.eks.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [each.value]
    }
  }
}

resource "aws_iam_role" "workflow" {
  name               = "${var.cluster_name}-workflow"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["workflow"].json
}

resource "aws_iam_role" "gateway" {
  name               = "${var.cluster_name}-gateway"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["gateway"].json
}

resource "aws_iam_role" "efs_csi" {
  name               = "${var.cluster_name}-efs-csi"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["efs_csi"].json
}

resource "aws_iam_role_policy_attachment" "efs_csi" {
  role       = aws_iam_role.efs_csi.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"
}

# S3 on the results bucket only, and the key that encrypts it.
data "aws_iam_policy_document" "results_read_write" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.results.arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.results.arn}/*"]
  }
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

data "aws_iam_policy_document" "results_read" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.results.arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/*"]
  }
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]
  }
}

resource "aws_iam_role_policy" "workflow" {
  name   = "results-read-write"
  role   = aws_iam_role.workflow.id
  policy = data.aws_iam_policy_document.results_read_write.json
}

resource "aws_iam_role_policy" "gateway" {
  name   = "results-read"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.results_read.json
}
