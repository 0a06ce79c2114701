"""How a node talks to the other nodes: the peer transport (Raft messages; it also
hands client wire connections over) and the peer HTTP client for admin calls."""
