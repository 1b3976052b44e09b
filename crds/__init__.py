"""The typed API of aistack: OllamaAgent and TaskOrchestration (group ai.stack, version v1alpha1)."""
