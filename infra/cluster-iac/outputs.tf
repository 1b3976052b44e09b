# The values infra/overlays/prod/controllers/cluster-settings.yaml needs.
output "region" {
  description = "AWS region (aistack-cluster: region)."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name: aws eks update-kubeconfig --name <this>."
  value       = module.eks.cluster_name
}

output "results_bucket" {
  description = "Results and artifacts bucket (aistack-cluster: resultsBucket)."
  value       = aws_s3_bucket.results.bucket
}

output "workflow_role_arn" {
  description = "IRSA role of workflow pods (aistack-cluster: workflowRoleArn)."
  value       = aws_iam_role.workflow.arn
}

output "gateway_role_arn" {
  description = "IRSA role of the gateway (aistack-cluster: gatewayRoleArn)."
  value       = aws_iam_role.gateway.arn
}

output "model_cache_file_system_id" {
  description = "EFS file system of the model cache (aistack-cluster: modelCacheFileSystemId)."
  value       = aws_efs_file_system.models.id
}
