"""The Hydra config package. Importing it registers the structured configs that have no YAML
file (every ``method=<name>``: its options dataclass) and the user's plugins, so the CLI and
Hydra's compose API see the same groups."""
from sparse_runner import methods  # noqa: F401
from sparse_runner.config.plugins import load_from_env

load_from_env()
