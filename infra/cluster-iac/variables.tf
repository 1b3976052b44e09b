variable "region" {
  description = "AWS region of the cluster and the results bucket."
  type        = string
  default     = "us-east-1"
}

variable "cluster_name" {
  description = "EKS cluster name; also the prefix of IAM roles and other resources."
  type        = string
  default     = "aistack-prod"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "availability_zones" {
  description = "Availability zones of the VPC's subnets (three, in var.region), named so the set never changes by itself."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b", "us-east-1c"]
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Who may reach the Kubernetes API from the internet (e.g. the office VPN). Empty: private endpoint only."
  type        = list(string)
  default     = []
}

variable "results_bucket" {
  description = "Name of the S3 bucket for results and Argo artifacts (globally unique). infra/overlays/prod uses it."
  type        = string
  default     = "aistack-results-prod"
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (one NVIDIA GPU per g5.xlarge / g6.xlarge)."
  type        = list(string)
  default     = ["g5.xlarge", "g6.xlarge"]
}

variable "gpu_nodes" {
  description = "Size of the GPU node group. The minimum is 0: GPUs are held only while batches run."
  type = object({
    min     = number
    max     = number
    desired = number
  })
  default = {
    min     = 0
    max     = 8
    desired = 0
  }
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (controllers, operator, ETL and publish steps)."
  type        = list(string)
  default     = ["m6i.xlarge"]
}

variable "cpu_nodes" {
  description = "Size of the CPU node group."
  type = object({
    min     = number
    max     = number
    desired = number
  })
  default = {
    min     = 2
    max     = 6
    desired = 3
  }
}
