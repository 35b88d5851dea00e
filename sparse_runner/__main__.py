"""``python -m sparse_runner <overrides>`` is ``sparse-run <overrides>``; it is what
``torchrun --nproc_per_node=N -m sparse_runner <overrides>`` starts on every rank."""
from .cli import main

if __name__ == "__main__":
    main()
