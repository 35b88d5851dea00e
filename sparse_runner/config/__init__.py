"""Checks of what the user typed before Hydra composes it (``overrides``: groups, unknown keys
with the closest key, ``+key``) and the user's own plugin modules (``plugins``). The YAML
config groups themselves live in ``conf/`` (installed as ``sparse_runner.conf``)."""
