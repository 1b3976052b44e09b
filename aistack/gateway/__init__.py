"""The API gateway: HTTP task submission and synchronous agent endpoints (`aistack gateway`).

A small ASGI service (FastAPI + uvicorn). Tasks posted to `/v1/tasks` are validated with the same
models and rules as the CRD, then created as TaskOrchestration CRs (cluster mode) or run by the
local runner (local mode). Every agent with an `endpoint` answers at `/v1/agents/{agent}{endpoint}`
and, when the endpoint is unique, at the bare endpoint (`POST /summarize`).
"""
