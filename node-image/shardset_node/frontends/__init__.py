"""The node's front ends: the HTTP API (with its OpenAPI document) and the binary wire
protocol server; both serve the same key-value operations and answers."""
