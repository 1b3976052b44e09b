"""Hera builders: step templates, TaskOrchestration -> Argo objects, the local runner."""
