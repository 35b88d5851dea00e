"""The Hydra config package. Importing it registers the structured configs that have no YAML
file (every ``method=<name>``: its options dataclass), the user's plugins and sparse-run's Hydra
plugins (the grids sweeper), so the CLI and Hydra's compose API see the same groups."""
from sparse_runner import methods  # noqa: F401
from sparse_runner.config.plugins import load_from_env
from sparse_runner.config.hydra_register import register_hydra_plugins

load_from_env()
register_hydra_plugins()
