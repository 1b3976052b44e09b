"""Units of work that run in a pod or locally: ingest, chunk, agents, publish."""
