"""Deterministic simulation and checking tools for Shardset."""
