"""Pure builders of the Kubernetes objects a ShardSet owns (dicts, ready to apply).

Owner references are added when applying (kopf.adopt); everything else is here.
"""
