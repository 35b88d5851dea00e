"""The GPU (Triton) kernels' code against float64, run on the CPU by Triton's interpreter.

``pytest -m gpu_code`` runs these alone. The interpreter does not check bounds, so the tests
add what a GPU's memory checker would: outputs written into views of NaN-poisoned buffers
(a write outside the output changes the guard, a missed write leaves NaN), inputs read from
strided views of NaN-poisoned buffers (a read outside the operand brings NaN in), and the
kernels' own ``CHECK`` asserts of every address against its buffer. Shapes are small (the
interpreter is slow) and the tile sizes smaller still, so every shape spans several tiles.
"""
from __future__ import annotations

import pytest
import torch

from sparse_runner.kernels import reference
from sparse_runner.kernels.gpu_grid import Blocks

tk = pytest.importorskip("sparse_runner.kernels.triton_cfi")
if not tk.INTERPRETED:  # pragma: no cover (a GPU machine runs tests/test_kernels.py's gpu rows)
    pytest.skip("a GPU is visible: the kernels run compiled there", allow_module_level=True)

pytestmark = pytest.mark.gpu_code
SMALL = Blocks(rows=16, batch=16, k=4, entries=32)
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
# (batch, n_in, n_out, k): batch 0/1/15/16/17/33, rows not a multiple of 32, k = 1 and k = n_in
SHAPES = [(0, 20, 7, 3), (1, 37, 19, 5), (15, 24, 33, 24), (16, 40, 45, 1), (17, 30, 70, 9),
          (33, 50, 37, 50)]
IDS = ["b{}_in{}_out{}_k{}".format(*s) for s in SHAPES]


def problem(shape, dtype, seed=0):
    """Random condensed weight and operands, rounded to dtype (the oracle sees the same)."""
    nb, n_in, n_out, k = shape
    g = torch.Generator().manual_seed(seed + nb)
    idx = torch.rand(n_out, n_in, generator=g).argsort(1)[:, :k].sort(1).values.int()
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return idx, r(n_out, k), r(nb, n_in), r(nb, n_out), r(n_out)


def assert_matches(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, terms: int):
    """``got`` (dtype) within rounding of the float64 ``want``: output rounding plus fp32 sums."""
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.isfinite(got).all(), "NaN/inf in the output (poison read or unwritten)"
    eps = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8,
           torch.float16: 2.0**-11}[dtype]
    scale = want.abs().max().item() if want.numel() else 0.0
    acc_eps = 2.0**-52 if dtype == torch.float64 else 2.0**-23
    bound = eps * want.abs() + 4 * (acc_eps * terms + eps) * max(scale, 1.0)
    bad = (got.double() - want).abs() > bound
    assert not bad.any(), f"{int(bad.sum())} entries off, max error {(got.double() - want).abs().max()}"


def poisoned(shape: tuple[int, int], dtype: torch.dtype, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): a strided [rows, cols] view inside a NaN-filled buffer."""
    buf = torch.full((shape[0] + 2 * pad, shape[1] * 2 + 2 * pad), float("nan"), dtype=dtype)
    return buf, buf[pad: pad + shape[0], pad: pad + 2 * shape[1]: 2]


def guard_intact(buf: torch.Tensor, view: torch.Tensor) -> bool:
    """Every element of ``buf`` outside ``view`` is still NaN (nothing wrote outside)."""
    outside = torch.ones_like(buf, dtype=torch.bool)
    flat = torch.arange(buf.numel()).view(buf.shape)
    pad = (view.data_ptr() - buf.data_ptr()) // buf.element_size()
    inside = torch.as_strided(flat.view(-1), view.shape, view.stride(), pad)
    outside.view(-1)[inside.reshape(-1)] = False
    return bool(torch.isnan(buf[outside]).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_forward_matches_float64(shape, dtype):
    idx, v, x, _, b = problem(shape, dtype)
    got = tk.forward(x, v, idx, b, SMALL, check=True)
    want = reference.forward(x.double(), v.double(), idx, b.double())
    assert_matches(got, want, dtype, shape[3])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_backward_input_matches_float64(shape, dtype):
    idx, v, _, gy, _ = problem(shape, dtype)
    n_in = shape[1]
    got = tk.backward_input(gy, v, reference.transpose_index(idx, n_in), n_in, SMALL, check=True)
    want = reference.backward_input(gy.double(), v.double(), idx, n_in)
    assert_matches(got, want, dtype, shape[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_backward_weight_matches_float64(shape, dtype):
    idx, _, x, gy, _ = problem(shape, dtype)
    got = tk.backward_weight(gy, x, idx, SMALL, check=True)
    want = reference.backward_weight(gy.double(), x.double(), idx)
    assert_matches(got, want, dtype, shape[0])


@pytest.mark.parametrize("blocks", [SMALL, tk.DEFAULT_BLOCKS], ids=["small", "default"])
@pytest.mark.parametrize("csc", [False, True], ids=["condensed", "csc"])
def test_spmm_writes_exactly_its_output_and_reads_only_its_inputs(blocks, csc):
    """Poisoned, strided operands and output: no stray read (NaN in) or write (guard hit)."""
    nb, n_in, n_out, k = 19, 21, 35, 6
    idx, v, x, gy, b = problem((nb, n_in, n_out, k), torch.float32, seed=5)
    src_shape, n_rows = ((nb, n_out), n_in) if csc else ((nb, n_in), n_out)
    _, src = poisoned(src_shape, torch.float32)
    src.copy_(gy if csc else x)
    out_buf, out = poisoned((nb, n_rows), torch.float32)
    if csc:
        t = reference.transpose_index(idx, n_in)
        rows = (t[:n_in + 1], t[n_in + 1: n_in + 1 + v.numel()], t[n_in + 1 + v.numel():],
                v.reshape(-1))
        want = reference.backward_input(gy.double(), v.double(), idx, n_in)
    else:
        rows, want = (None, idx, None, v), reference.forward(x.double(), v.double(), idx, b.double())
    tk.spmm(rows, 0 if csc else k, src, n_rows, out, None if csc else b, blocks, check=True)
    assert guard_intact(out_buf, out), "the kernel wrote outside its output"
    assert_matches(out, want, torch.float32, max(n_out, k))


def test_sddmm_reads_only_its_inputs_with_a_split_batch():
    """Batch split over 3 chunks (partial sums) from poisoned strided operands."""
    nb, n_in, n_out, k = 40, 13, 11, 4
    idx, _, x, gy, _ = problem((nb, n_in, n_out, k), torch.float32, seed=9)
    _, xs = poisoned((nb, n_in), torch.float32)
    _, gs = poisoned((nb, n_out), torch.float32)
    xs.copy_(x)
    gs.copy_(gy)
    blocks = Blocks(rows=16, batch=8, k=4, entries=16)
    got = tk.sddmm(idx, gs, xs, blocks, target_programs=9, check=True)  # 3 tiles x 3 splits
    assert_matches(got, reference.backward_weight(gy.double(), x.double(), idx), torch.float32, nb)


def test_out_of_range_indices_are_skipped_not_read():
    """A corrupt index (-1, n_in) contributes nothing: the kernels never address outside x."""
    idx, v, x, gy, _ = problem((17, 12, 9, 3), torch.float32, seed=2)
    bad = idx.clone()
    bad[0, 0], bad[4, 2] = -1, 12
    keep = (bad >= 0) & (bad < 12)
    want = reference.forward(x.double(), (v * keep).double(), bad.clamp(0, 11), None)
    assert_matches(tk.forward(x, v, bad, None, SMALL, check=True), want, torch.float32, 3)
    dv = tk.backward_weight(gy, x, bad, SMALL, check=True)
    assert (dv[~keep] == 0).all()


def test_address_check_fires_on_an_address_outside_the_operand():
    """CHECK=True checks every address against its buffer: here x is declared half its size,
    as a launcher with a wrong stride or extent would, and the kernel reports it."""
    idx, v, x, _, _ = problem((16, 12, 9, 3), torch.float32, seed=3)
    out = torch.empty(16, 9)
    err = torch.zeros(1, dtype=torch.int32)
    tk._spmm_kernel[(4,)](err, idx, idx, idx, v, x, v, out, 9, 12, 16, 3, v.numel(), 12, 1, 9, 1,
                          x.numel() // 2, out.numel(), HAS_PTR=False, HAS_POS=False,
                          HAS_BIAS=False, BLOCK_R=16, BLOCK_B=16, BLOCK_K=4,
                          ACC=tk._acc(torch.float32), CHECK=True)
    with pytest.raises(IndexError, match="read src out of bounds"):
        tk._raise_if_flagged(err)


def test_triton_operators_pass_opcheck():
    """The custom_op wrappers (triton_op on a GPU) have consistent fake kernels and schemas."""
    from sparse_runner.kernels import gpu

    idx, v, x, gy, b = problem((5, 10, 6, 4), torch.float32, seed=4)
    t = reference.transpose_index(idx, 10)
    for op, args in ((gpu.forward, (x, v, idx, b)), (gpu.backward_input, (gy, v, t, 10)),
                     (gpu.backward_weight, (gy, x, idx))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_cuda_registration_functions_compute_the_operators():
    """What register_cuda installs for sparse_run::cfi_* (called here on CPU tensors)."""
    from sparse_runner.kernels import gpu

    idx, v, x, gy, b = problem((17, 14, 10, 5), torch.float64, seed=6)
    d = torch.float64
    assert_matches(gpu._cfi_forward(x, v, idx, b), reference.forward(x, v, idx, b), d, 5)
    assert_matches(gpu._cfi_backward_input(gy, v, idx, 14, None),
                   reference.backward_input(gy, v, idx, 14), d, 10)
    assert_matches(gpu._cfi_backward_weight(gy, x, idx), reference.backward_weight(gy, x, idx),
                   d, 17)
    with pytest.raises(TypeError, match="same dtype"):
        gpu._cfi_forward(x.float(), v, idx, b)


def test_float16_and_empty_layers():
    """float16 (autocast fp16 on a GPU) against float64; 0 rows or nonzeros give shapes."""
    shape = (17, 30, 21, 7)
    idx, v, x, gy, b = problem(shape, torch.float16, seed=8)
    d = lambda t: t.double()  # noqa: E731
    assert_matches(tk.forward(x, v, idx, b, SMALL, check=True),
                   reference.forward(d(x), d(v), idx, d(b)), torch.float16, 7)
    assert_matches(tk.backward_weight(gy, x, idx, SMALL, check=True),
                   reference.backward_weight(d(gy), d(x), idx), torch.float16, 17)
    i0, v0 = torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 3)
    xe = torch.randn(4, 5)
    assert tk.forward(xe, v0, i0, None, SMALL, check=True).shape == (4, 0)
    t0 = reference.transpose_index(i0, 5)
    dx = tk.backward_input(torch.zeros(4, 0), v0, t0, 5, SMALL, check=True)
    assert dx.shape == (4, 5) and (dx == 0).all()
    assert tk.backward_weight(torch.zeros(4, 0), xe, i0, SMALL, check=True).shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[4], SHAPES[5]], ids=IDS[4:])
def test_all_kernels_with_the_gpu_tile_sizes(shape, dtype):
    """The tiles a GPU runs (32 rows x 32 batch, 2 nonzeros a step): partial tiles of 32."""
    idx, v, x, gy, b = problem(shape, dtype, seed=11)
    nb, n_in, n_out, k = shape
    d = lambda t: t.double()  # noqa: E731
    assert_matches(tk.forward(x, v, idx, b), reference.forward(d(x), d(v), idx, d(b)), dtype, k)
    t = reference.transpose_index(idx, n_in)
    assert_matches(tk.backward_input(gy, v, t, n_in),
                   reference.backward_input(d(gy), d(v), idx, n_in), dtype, n_out)
    assert_matches(tk.backward_weight(gy, x, idx),
                   reference.backward_weight(d(gy), d(x), idx), dtype, nb)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shapes_cover_the_vector_and_the_strided_batch_paths(dtype):
    """Batch 16 (batch-contiguous, a multiple of 16 bytes) takes the 16-byte loads, 15/17/33
    the strided fallback (fp64: 2 per load, so batch 16 only too: 33 is odd)."""
    vec = 16 // dtype.itemsize
    taken = {s[0]: tk.batch_vec(tk.batch_major(torch.empty(s[0], s[1], dtype=dtype)),
                                SMALL.batch) for s in SHAPES if s[0]}
    assert taken == {1: 1, 15: 1, 16: vec, 17: 1, 33: 1}
    xt = torch.empty(8, 64, dtype=dtype).t()
    assert tk.batch_vec(xt, SMALL.batch) == vec and tk.batch_vec(xt, vec // 2) == 1
    assert tk.batch_vec(xt, SMALL.batch, torch.empty(64, 8, dtype=dtype)) == 1  # dy row-major


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vector_path_reads_only_its_batch_runs(dtype):
    """spmm and sddmm on batch-contiguous views whose columns sit between NaN columns (the
    column stride a multiple of 16 bytes): a read past a run of the batch brings NaN in."""
    nb, n_in, n_out, k = 32, 24, 20, 6
    idx, v, x, gy, b = problem((nb, n_in, n_out, k), dtype, seed=9)
    xbuf = torch.full((n_in, nb + 16), float("nan"), dtype=dtype)
    gbuf = torch.full((n_out, nb + 16), float("nan"), dtype=dtype)
    xs, gs = xbuf[:, 8:8 + nb].t(), gbuf[:, 8:8 + nb].t()
    xs.copy_(x)
    gs.copy_(gy)
    assert tk.batch_vec(xs, SMALL.batch, gs) == 16 // dtype.itemsize
    d = lambda t: t.double()  # noqa: E731
    out = torch.empty(nb, n_out, dtype=dtype)
    rows = (None, idx, None, v)
    assert_matches(tk.spmm(rows, k, xs, n_out, out, b, SMALL, check=True),
                   reference.forward(d(x), d(v), idx, d(b)), dtype, k)
    assert_matches(tk.sddmm(idx, gs, xs, SMALL, target_programs=3, check=True),
                   reference.backward_weight(d(gy), d(x), idx), dtype, nb)
