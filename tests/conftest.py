"""Suite-wide settings: hypothesis runs without wall-clock deadlines (the CI machine
has two cores shared with simulations; speed targets live in bench/, not in tests)."""

from hypothesis import settings

settings.register_profile("shardset", deadline=None, print_blob=True)
settings.load_profile("shardset")
