"""``python -m sparse_runner.kernels [--cuda] [--verbose]``: build the kernels ahead of time.

Importing the package defines the operators' schemas (ops.py, sconv_ops.py) that the compiled
library registers into, so this entry point sits on top of everything in kernels/.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import build


def main(argv: list[str] | None = None) -> int:
    """``python -m sparse_runner.kernels [--cuda] [--verbose]``: build ahead of time."""
    parser = argparse.ArgumentParser(prog="python -m sparse_runner.kernels",
                                     description="Build the sparse_run kernels into the cache.")
    parser.add_argument("--cuda", action="store_true",
                        help="also compile the Triton GPU kernels for sm_80 and sm_90 (a check: "
                             "needs no GPU; at run time Triton compiles for the GPU at hand)")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    if args.cuda and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "0"  # compile for real targets, not the interpreter

    for device_type in ("cpu", "cuda") if args.cuda else ("cpu",):
        reason = build.missing_tool(device_type)
        if reason:
            print(f"cannot build the {device_type} kernels: {reason}", file=sys.stderr)
            return 1
        if device_type == "cpu":
            print(f"cpu: {build.compile_extension(args.verbose)}")
            continue
        from .triton_aot import compile_all  # imports triton: only when asked

        for line in compile_all():
            print(f"cuda: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
