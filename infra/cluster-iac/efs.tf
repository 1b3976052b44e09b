# The Ollama model cache: one encrypted EFS file system that every GPU node mounts (the prod
# overlay's aistack-models StorageClass provisions access points on it).
resource "aws_efs_file_system" "models" {
  creation_token   = "${var.cluster_name}-models"
  encrypted        = true
  kms_key_id       = aws_kms_key.data.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }
}

resource "aws_efs_backup_policy" "models" {
  file_system_id = aws_efs_file_system.models.id
  backup_policy {
    # models are re-pulled from their registry; backups would only cost
    status = "DISABLED"
  }
}

resource "aws_security_group" "models" {
  name        = "${var.cluster_name}-models-efs"
  description = "NFS from the cluster's nodes to the model cache"
  vpc_id      = module.vpc.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "models_nfs" {
  security_group_id            = aws_security_group.models.id
  description                  = "NFS from EKS nodes"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = module.eks.node_security_group_id
}

resource "aws_efs_mount_target" "models" {
  count           = length(module.vpc.private_subnets)
  file_system_id  = aws_efs_file_system.models.id
  subnet_id       = module.vpc.private_subnets[count.index]
  security_groups = [aws_security_group.models.id]
}
