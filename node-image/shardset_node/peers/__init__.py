"""How a node talks to the other nodes: the peer HTTP client for admin calls."""
