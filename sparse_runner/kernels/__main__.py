"""``python -m sparse_runner.kernels [--cuda] [--verbose]``: build the kernels ahead of time."""
import sys

from .build import main

sys.exit(main())
