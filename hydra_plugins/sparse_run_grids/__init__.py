"""sparse-run's Hydra sweeper plugin (``hydra/sweeper=grids``); Hydra finds it here by scanning
the ``hydra_plugins`` namespace package."""
