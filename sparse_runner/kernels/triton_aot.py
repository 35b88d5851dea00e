"""Compile the Triton kernels for real GPU targets without a GPU (a check, not a cache).

Triton's interpreter runs the kernels' Python semantics on the CPU but skips the compiler, so
a construct the compiler rejects would pass the interpreter tests. ``triton.compile`` with an
explicit ``GPUTarget`` runs the whole pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin through
the ptxas Triton ships) on any machine. At run time Triton compiles again for the GPU at hand,
with its own specialisations, so this is a check that the kernels compile, not a prebuild.
Pointers are compiled 16-byte aligned (as the JIT specialises fresh tensors); each kernel
with a ``VEC`` parameter is compiled on both paths; :func:`global_loads` reads the PTX's
load widths per source line (the 16-byte-load test).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Iterator

import torch

DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.float16: "fp16"}
ARCHS = (80, 90)


def _variants(dtype: torch.dtype) -> list[tuple[str, object, dict, dict]]:
    """(name, jit function, signature, constexprs) of every kernel the launchers use."""
    from . import triton_cfi as tk

    t = DTYPES[dtype]
    acc = tk._acc(dtype)
    ints = ("n_rows", "n_src", "nb", "k", "nnz", "s_sb", "s_sc", "s_ob", "s_or",
            "src_numel", "out_numel")
    spmm_sig = {"err": "*i32", "ptr": "*i32", "cols": "*i32", "pos": "*i32", "vals": f"*{t}", "src": f"*{t}",
                "bias": f"*{t}", "out": f"*{t}", **{n: "i64" for n in ints}}
    blocks = tk.DEFAULT_BLOCKS
    base = {"BLOCK_R": blocks.rows, "BLOCK_B": blocks.batch, "BLOCK_K": blocks.k, "ACC": acc,
            "CHECK": False}
    fwd = {**base, "HAS_PTR": False, "HAS_POS": False, "HAS_BIAS": True}
    bwd = {**base, "HAS_PTR": True, "HAS_POS": True, "HAS_BIAS": False}
    sd_ints = ("nnz", "k", "n_src", "nb", "chunk", "s_db", "s_do", "s_xb", "s_xc",
               "dy_numel", "x_numel")
    acc_t = "fp64" if dtype == torch.float64 else "fp32"
    sd_sig = {"err": "*i32", "idx": "*i32", "dy": f"*{t}", "x": f"*{t}", "part": f"*{acc_t}",
              **{n: "i64" for n in sd_ints}}
    sd = {"BLOCK_E": blocks.entries, "BLOCK_B": blocks.batch, "ACC": acc, "CHECK": False}
    return _with_vec(dtype, [("forward", tk._spmm_kernel, spmm_sig, fwd),
                             ("backward_input", tk._spmm_kernel, spmm_sig, bwd),
                             ("backward_weight", tk._sddmm_kernel, sd_sig, sd),
                             *_sconv_variants(dtype)])


def _with_vec(dtype: torch.dtype, variants: list) -> list[tuple[str, object, dict, dict]]:
    """Each kernel with a ``VEC`` parameter twice: VEC=1 (any layout) and ``<name>_vec``
    with the 16-byte width its launcher takes for aligned layouts (batch_vec, position_vec)."""
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    out = []
    for name, fn, sig, const in variants:
        if "VEC" not in getattr(fn, "arg_names", ()):
            out.append((name, fn, sig, const))
            continue
        out += [(name, fn, sig, {**const, "VEC": 1}),
                (f"{name}_vec", fn, sig, {**const, "VEC": vec})]
    return out


def _ints(names: str) -> dict[str, str]:
    """i32: what Triton's JIT passes for ints below 2**31 (sizes, strides of real layers)."""
    return {n: "i32" for n in names.split()}


def _sconv_variants(dtype: torch.dtype) -> list[tuple[str, object, dict, dict]]:
    """The direct sparse convolutions (triton_sconv.py), signatures as their launchers pass."""
    from . import triton_sconv as ts

    t, blocks = DTYPES[dtype], ts.DEFAULT_BLOCKS
    acc_t = "fp64" if dtype == torch.float64 else "fp32"
    geom = "kw taps sh sw ph pw"
    tiles = {"BLOCK_R": blocks.rows, "BLOCK_P": blocks.batch, "BLOCK_K": blocks.k,
             "ACC": ts.tk._acc(dtype), "CHECK": False, "num_warps": ts.NUM_WARPS}
    fwd = {"err": "*i32", "idx": "*i32", "vals": f"*{t}", "x": f"*{t}", "out": f"*{t}",
           **_ints(f"n_out kk C H W Ho Wo n_pos {geom} sxn sxc sxh sxw son soc soh sow "
                   "x_numel out_numel")}
    dx = {"err": "*i32", "ptr": "*i32", "cols": "*i32", "pos": "*i32", "vals": f"*{t}",
          "dy": f"*{t}", "dx": f"*{t}",
          **_ints(f"n_rows n_out nnz C H W Ho Wo Hq Wq n_pos {geom} sgn sgc sgh sgw "
                  "sxn sxc sxh sxw dy_numel dx_numel")}
    dw = {"err": "*i32", "idx": "*i32", "dy": f"*{t}", "x": f"*{t}", "part": f"*{acc_t}",
          **_ints(f"nnz kk C H W Ho Wo n_pos chunk {geom} sgn sgc sgh sgw sxn sxc sxh sxw "
                  "dy_numel x_numel")}
    dw_const = {"BLOCK_E": blocks.entries, "BLOCK_P": blocks.batch, "ACC": tiles["ACC"],
                "CHECK": False, "num_warps": ts.NUM_WARPS}
    return [("sconv_forward", ts._fwd_kernel, fwd, tiles),
            ("sconv_backward_input", ts._dx_kernel, dx, tiles),
            ("sconv_backward_weight", ts._dw_kernel, dw, dw_const)]


def compile_kernel(fn: object, signature: dict, constexprs: dict, arch: int,
                   aligned: bool = True) -> dict:
    """Compile one kernel for ``sm_<arch>``; returns the sizes the compiler reports and the PTX.
    ``constexprs`` may carry the launch's ``num_warps`` (a compile option, not a parameter).
    ``aligned``: pointer arguments 16-byte aligned, the specialisation Triton's JIT makes for
    every tensor whose ``data_ptr() % 16 == 0`` (any fresh allocation); without it the
    compiler may assume only element alignment, and no load is wider than one element."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    if isinstance(fn, InterpretedFunction):  # TRITON_INTERPRET=1: compile the same source
        fn = JITFunction(fn.fn)
    constexprs = dict(constexprs)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in signature.items() if aligned and t.startswith("*")}
    options = {"num_warps": constexprs.pop("num_warps")} if "num_warps" in constexprs else {}
    for name in constexprs:
        signature = {**signature, name: "constexpr"}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return {"cubin_bytes": len(kernel.asm["cubin"]), "shared": kernel.metadata.shared,
            "ptx": kernel.asm["ptx"]}


def global_loads(ptx: str) -> Counter:
    """Global loads of a PTX kernel by (source line, width): width "v4.b32" is one 128-bit
    load, "b32" a scalar one. The line is the kernel file's line (``.loc 1``) of the load, or
    for code inlined from another jit function the line of its call. Triton emits a load as
    inline asm (a ``mov`` per element for ``other``, then the ``ld``), and LLVM numbers its
    lines on from the load's: a run of ``.loc`` of one column on consecutive lines with no
    load in between counts as the run's first line."""
    import re

    loads: Counter = Counter()
    line = run_line = run_col = 0
    for text in ptx.splitlines():
        loc = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)\s+(\d+)", text)
        if loc:
            at = re.search(r"inlined_at\s+1\s+(\d+)", text)
            if loc.group(1) != "1" and not at:
                continue
            new, col = (int(loc.group(2)), int(loc.group(3))) if not at else (int(at.group(1)), 0)
            if not (col == run_col and run_line <= new <= line + 1):
                run_line, run_col = new, col
            line = new
            continue
        ld = re.match(r"\s*(?:@!?%p\d+\s+)?ld\.global((?:\.\w+)*)", text)
        if ld:
            mods = ld.group(1).split(".")
            vec = next((m for m in mods if re.fullmatch(r"v\d", m)), "")
            size = next((m for m in mods if re.fullmatch(r"[bfsu]\d+", m)), "?")
            loads[run_line, f"{vec}.{size}" if vec else size] += 1
            run_col = -1  # the next load starts a new run
    return loads


def source_line(fn: object, text: str) -> int:
    """Line number in its file of the one line of jit function ``fn`` that contains ``text``."""
    import inspect

    fn = getattr(fn, "fn", fn)
    lines, first = inspect.getsourcelines(fn)
    hits = [first + k for k, ln in enumerate(lines) if text in ln]
    if len(hits) != 1:
        raise ValueError(f"{text!r} is on {len(hits)} lines of {fn.__name__}, not one")
    return hits[0]


def ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes of a kernel, from ``ptxas -v`` (the one Triton ships)."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    target = re.search(r"^\.target (\S+)", ptx, re.M)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        r = subprocess.run([str(ptxas), f"-arch={target.group(1) if target else f'sm_{arch}'}",
                            "-v", "k.ptx", "-o", "k.cubin"], cwd=tmp, capture_output=True,
                           text=True, check=True)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", r.stderr)
    return {"registers": int(regs.group(1)) if regs else 0,
            "spill_bytes": sum(int(v) for v in spills)}


def compile_all(archs: tuple[int, ...] = ARCHS,
                dtypes: tuple[torch.dtype, ...] = tuple(DTYPES)) -> Iterator[str]:
    """Compile every kernel variant for every arch; yield one line per compiled kernel."""
    for arch in archs:
        for dtype in dtypes:
            for name, fn, sig, const in _variants(dtype):
                t0 = time.perf_counter()
                info = compile_kernel(fn, sig, const, arch)
                yield (f"sm_{arch} {name} {DTYPES[dtype]}: {info['cubin_bytes']} B cubin, "
                       f"{info['shared']} B shared, {time.perf_counter() - t0:.1f} s")
