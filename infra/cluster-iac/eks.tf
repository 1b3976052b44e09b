module "eks" {
  #checkov:skip=CKV_TF_1:a registry module pinned to an exact release; the registry serves that release's tag
  source  = "terraform-aws-modules/eks/aws"
  version = "20.37.2"

  cluster_name    = var.cluster_name
  cluster_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_endpoint_private_access      = true
  cluster_endpoint_public_access       = length(var.cluster_endpoint_public_access_cidrs) > 0
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  # IRSA: the OIDC provider that iam.tf's roles trust
  enable_irsa                              = true
  enable_cluster_creator_admin_permissions = true

  # Kubernetes secrets encrypted with a customer-managed key (created by the module)
  cluster_encryption_config = {
    resources = ["secrets"]
  }
  cluster_enabled_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  cluster_addons = {
    coredns                = {}
    kube-proxy             = {}
    vpc-cni                = {}
    eks-pod-identity-agent = {}
    aws-efs-csi-driver = {
      service_account_role_arn = aws_iam_role.efs_csi.arn
    }
  }

  eks_managed_node_groups = {
    # controllers, the operator, the gateway, ETL and publish steps
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      min_size       = var.cpu_nodes.min
      max_size       = var.cpu_nodes.max
      desired_size   = var.cpu_nodes.desired
    }

    # agent steps with their Ollama sidecar. The NVIDIA AMI ships the driver and container
    # toolkit; the GPU Operator adds the device plugin and DCGM. Only pods that tolerate the
    # taint (compiled agent steps, the GPU Operator's DaemonSets) land here.
    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.gpu_nodes.min
      max_size       = var.gpu_nodes.max
      desired_size   = var.gpu_nodes.desired

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size = 200
            volume_type = "gp3"
            encrypted   = true
          }
        }
      }

      labels = {
        "nvidia.com/gpu.present" = "true"
      }

      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }
    }
  }
}
