"""Building the kernels: the reference fallback (one warning) and the GPU kernels compiling."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FALLBACK_SCRIPT = textwrap.dedent("""
    import warnings, torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from sparse_runner.kernels import SparseLinear, build, cfi_linear
        layer = SparseLinear(16, 8, 0.5)
        x = torch.randn(3, 16, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        SparseLinear(16, 8, 0.9)(x)
    ours = [str(w.message) for w in caught if "sparse_run" in str(w.message)]
    assert len(ours) == 1 and "SPARSE_RUN_NO_EXT" in ours[0] and "fallback" in ours[0], ours
    assert build.status() == {"cpu": "reference: SPARSE_RUN_NO_EXT is set"}, build.status()
    dense = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)
    torch.testing.assert_close(y, dense)
    ops = torch.ops.sparse_run
    v, i = layer.values.detach(), layer.indices
    t = ops.cfi_transpose_index(i, 16)
    g = torch.randn(3, 8)
    torch.library.opcheck(ops.cfi_forward.default, (x, layer.values, i, layer.bias, t))
    torch.library.opcheck(ops.cfi_backward_input.default, (g, v, i, 16, t))
    torch.library.opcheck(ops.cfi_backward_weight.default, (g, x.detach(), i))
    torch.library.opcheck(ops.cfi_transpose_index.default, (i, 16))
    xd = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    vd = v.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cfi_linear(a, b, i, None, t), (xd, vd))
    print("fallback ok")
""")


def _run(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=timeout)


def test_reference_fallback_when_extension_disabled():
    r = _run(["-c", FALLBACK_SCRIPT], {"SPARSE_RUN_NO_EXT": "1"}, timeout=300)
    assert r.returncode == 0 and "fallback ok" in r.stdout, r.stdout + r.stderr[-4000:]


def test_missing_compiler_falls_back_with_a_clear_reason():
    script = ("import warnings, torch\n"
              "from sparse_runner.kernels import build, ops\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    warnings.simplefilter('always')\n"
              "    print(build.ensure('cpu'))\n"
              "print([str(m.message) for m in w])\n")
    r = _run(["-c", script], {"CXX": "no-such-compiler-xyz", "SPARSE_RUN_NO_EXT": ""}, 300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "reference: no C++ compiler found" in r.stdout and "set CXX" in r.stdout


@pytest.mark.gpu_code
def test_triton_kernels_compile_for_sm80_and_sm90_without_spills():
    """The AOT check compiles every GPU kernel for sm_80/sm_90 (no GPU, no nvcc needed), and
    the kernels keep their accumulators in registers (ptxas reports no spills)."""
    r = _run(["-m", "sparse_runner.kernels", "--cuda"], {"SPARSE_RUN_NO_EXT": "",
                                                          "CUDA_VISIBLE_DEVICES": ""}, 900)
    assert r.returncode == 0, r.stdout + r.stderr[-6000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("cuda: sm_")]
    assert len(lines) == 2 * 4 * 12, r.stdout  # archs x dtypes x (3 Linear, 3 conv) x VEC
    script = ("import torch\n"
              "from sparse_runner.kernels import triton_aot as a\n"
              "for dt in (torch.float32, torch.bfloat16):\n"
              "    for name, fn, sig, c in a._variants(dt):\n"
              "        u = a.ptxas_usage(a.compile_kernel(fn, sig, c, 90)['ptx'], 90)\n"
              "        print(name, dt, u['registers'], u['spill_bytes'])\n")
    r = _run(["-c", script], {"TRITON_INTERPRET": "0"}, 600)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert len(rows) == 24 and all(int(row[-1]) == 0 for row in rows), r.stdout


VEC_SCRIPT = textwrap.dedent("""
    import json, torch
    from sparse_runner.kernels import triton_aot as a, triton_cfi as tk, triton_sconv as ts
    gathers = {"forward": (tk._spmm_kernel, ["xg = tl.load(src + off"]),
               "backward_input": (tk._spmm_kernel, ["xg = tl.load(src + off"]),
               "backward_weight": (tk._sddmm_kernel, ["d = tl.load(dy + od",
                                                      "xv = tl.load(x + ox"]),
               "sconv_forward": (ts._fwd_kernel, ["xg = tl.load(x + off"]),
               "sconv_backward_input": (ts._dx_kernel, ["g = tl.load(dy + off"]),
               "sconv_backward_weight": (ts._dw_kernel, ["d = tl.load(dy + od"])}
    ONES = ("nb", "s_sc", "chunk", "s_do", "s_xc", "n_pos", "sgc", "sxc", "sgw", "sxw")
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        for name, fn, sig, const in a._variants(dt):
            base = name.removesuffix("_vec")
            if base not in gathers:
                continue
            ptx = a.compile_kernel(fn, sig, const, 90)["ptx"]
            loads = a.global_loads(ptx)
            lines = [a.source_line(gathers[base][0], t) for t in gathers[base][1]]
            out[f"{name} {a.DTYPES[dt]}"] = {
                "gathers": [{w: n for (ln, w), n in loads.items() if ln == line}
                            for line in lines],
                "spill_bytes": a.ptxas_usage(ptx, 90)["spill_bytes"]}
            if name.endswith("_vec"):  # the JIT makes an int argument equal to 1 a constant:
                ones = {n: 1 for n in ONES if n in sig}  # the divided ones, re-bound
                a.compile_kernel(fn, sig, {**const, **ones}, 90)
    print(json.dumps(out))
""")


# The 1x1 convolutions' tile gives a thread 4 positions a step: 4 bf16 are one 8-byte load.
EIGHT_BYTES = {"sconv_forward_vec bf16", "sconv_backward_input_vec bf16"}


@pytest.mark.gpu_code
def test_vectorised_gathers_are_128_bit_loads_in_the_sm90_ptx():
    """The 16-byte paths (batch-contiguous cfi operands; the sconv weight gradient's dy; x and
    dy of 1x1 unpadded stride-1 convolutions) load every element of their gathers with
    ld.global.v4 (4 fp32 or 8 bf16) on sm_90, without spills; the VEC=1 paths of the same
    kernels load the same operands one element at a time. The 16-byte paths also compile
    where an argument they get divided by VEC is 1 (the JIT then makes it a constant)."""
    r = _run(["-c", VEC_SCRIPT], {"TRITON_INTERPRET": "0"}, 600)
    assert r.returncode == 0, r.stderr[-4000:]
    got = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * 12, got  # dtypes x 6 kernels x (VEC=1, _vec)
    for name, info in got.items():
        assert info["spill_bytes"] == 0, (name, info)
        for widths in info["gathers"]:
            if name.split()[0].endswith("_vec"):
                want = "v2.b32" if name in EIGHT_BYTES else "v4.b32"
                assert set(widths) == {want} and widths[want] >= 1, (name, info)
            else:
                assert "v4.b32" not in widths and sum(widths.values()) >= 4, (name, info)
