"""The admin actions the operator drives a node with (`POST /v1/admin/<action>`),
grouped by what they change; `dispatch` maps an action's name to its handler."""
