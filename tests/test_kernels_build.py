"""Building the kernels: the reference fallback (one warning) and the CUDA sources compiling."""
from __future__ import annotations

import os
import shutil
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
    assert len(ours) == 1 and "SPARSE_RUN_NO_EXT" in ours[0] and "reference" in ours[0], ours
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


@pytest.mark.nvcc
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
def test_cuda_sources_compile():
    """The AOT build command compiles and links the CUDA kernels (sm_80 and sm_90)."""
    r = _run(["-m", "sparse_runner.kernels", "--cuda"],
             {"TORCH_CUDA_ARCH_LIST": "8.0;9.0", "SPARSE_RUN_NO_EXT": ""}, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-6000:]
    assert "cuda: " in r.stdout and r.stdout.strip().endswith(".so")
