"""The bottom layer: the ShardSet API (pydantic models, the CRD and RBAC generated from
them), names and settings, and the plain data every layer above shares. Pure: no I/O,
no aiohttp, kopf, kubernetes or asyncio (import-linter checks it)."""
