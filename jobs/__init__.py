"""Ray job entry points: ``python -m jobs.<name>``."""
