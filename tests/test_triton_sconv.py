"""The GPU (Triton) direct sparse convolutions against float64 F.conv2d, in Triton's interpreter.

``pytest -m gpu_code`` runs these with the other GPU-code tests. Oracles are the dense
convolution (and its two gradients) of the scattered weight in float64 on the same
dtype-rounded inputs; every call runs in ``CHECK`` mode (each address checked against its
buffer; a flagged access raises), and the poison tests read from strided views of NaN buffers
and write into one (a stray read brings NaN in, a stray write hits the guard, a missed write
leaves NaN). Shapes are tiny and tiles small so each shape spans several tiles and splits.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from sparse_runner.bench._gpu_stage import compare
from sparse_runner.kernels.gpu_grid import Blocks
from sparse_runner.kernels.sconv_ops import dense_conv_weight, ell_from_mask

ts = pytest.importorskip("sparse_runner.kernels.triton_sconv")
if not ts.INTERPRETED:  # pragma: no cover (a GPU runs scripts/gpu_check.sh's sconv stage)
    pytest.skip("a GPU is visible: the kernels run compiled there", allow_module_level=True)

pytestmark = pytest.mark.gpu_code
SMALL = Blocks(rows=8, batch=16, k=4, entries=32)
# (batch, C, O, H, W, kernel, stride, padding)
CASES = [(2, 5, 6, 7, 5, (1, 1), (1, 1), (0, 0)), (3, 4, 7, 9, 7, (1, 1), (2, 2), (0, 0)),
         (2, 4, 9, 5, 7, (3, 3), (1, 1), (1, 1)), (2, 5, 6, 9, 7, (3, 3), (2, 2), (1, 1)),
         (1, 3, 5, 8, 7, (5, 3), (1, 1), (2, 1)), (2, 3, 6, 11, 9, (5, 3), (2, 2), (0, 2)),
         (2, 3, 5, 5, 6, (3, 3), (1, 1), (2, 2)), (1, 4, 6, 9, 9, (3, 3), (2, 1), (0, 1)),
         (2, 5, 6, 3, 8, (1, 1), (1, 1), (0, 0))]  # 1x1, W = 8: all three 16-byte paths
IDS = ["b{}c{}o{}_{}x{}_k{}_s{}_p{}".format(b, c, o, h, w, "x".join(map(str, k)),
                                             "".join(map(str, s)), "".join(map(str, p)))
       for b, c, o, h, w, k, s, p in CASES]


def problem(case, dtype, density=0.35, seed=0):
    """ELL weight of a random mask (row 0 all padded, ragged rows) and dtype-rounded operands."""
    nb, c, o, h, w, kernel, stride, padding = case
    g = torch.Generator().manual_seed(seed + 7 * nb + h)
    mask = torch.rand(o, c, *kernel, generator=g) < density
    mask[0] = False
    mask[1, 0, 0, 0] = True  # at least one nonzero in the layer
    idx = ell_from_mask(mask)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    ho, wo = ts.out_size(h, w, kernel, stride, padding)
    return idx, r(*idx.shape), r(nb, c, h, w), r(nb, o, ho, wo)


def oracles(case, idx, v, x, gy):
    """float64 (y, dx, dv) of the dense convolution on the scattered weight."""
    _, c, _, _, _, kernel, stride, padding = case
    d = lambda t: t.double()  # noqa: E731
    wd = dense_conv_weight(d(v), idx, c, kernel)
    y = F.conv2d(d(x), wd, stride=stride, padding=padding)
    dx = nn_grad.conv2d_input(x.shape, wd, d(gy), stride=stride, padding=padding)
    dw = nn_grad.conv2d_weight(d(x), wd.shape, d(gy), stride=stride, padding=padding)
    dv = dw.flatten(1).gather(1, idx.clamp(min=0).long()) * (idx >= 0)
    return y, dx, dv


def assert_close(got, want, dtype, terms, what):
    ok, err = compare(got, want, dtype, terms)
    assert got.dtype == dtype and ok, f"{what}: max error {err}"


def run_all(case, idx, v, x, gy, blocks=SMALL, target_programs=5):
    _, c, _, h, w, kernel, stride, padding = case
    y = ts.forward(x, v, idx, kernel, stride, padding, blocks, check=True)
    t = ts.transpose_index(idx, c, kernel, stride, padding)
    dx = ts.backward_input(gy, v, t, (c, h, w), kernel, stride, padding, blocks, check=True)
    dv = ts.backward_weight(gy, x, idx, kernel, stride, padding, blocks,
                            target_programs=target_programs, check=True)
    return y, dx, dv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_both_gradients_match_float64(case, dtype):
    idx, v, x, gy = problem(case, dtype)
    got = run_all(case, idx, v, x, gy)
    want = oracles(case, idx, v, x, gy)
    nb, _, o, *_, kernel, _, _ = case
    ho, wo = gy.shape[2:]
    terms = (idx.shape[1], o * kernel[0] * kernel[1], nb * ho * wo)
    for name, g, w_, n in zip(("forward", "dx", "dW"), got, want, terms):
        assert_close(g, w_, dtype, n, name)
    assert (got[0][:, 0] == 0).all(), "an all-padded output channel is exactly zero"
    assert (got[2][idx < 0] == 0).all(), "padded slots get an exact-zero gradient"


def test_gpu_tile_sizes_and_a_single_split():
    """The tiles a GPU runs (32 x 32, 2 entries a step) with partial tiles, one split."""
    case = (2, 3, 37, 9, 7, (3, 3), (2, 2), (1, 1))
    idx, v, x, gy = problem(case, torch.float32, density=0.25, seed=3)
    got = run_all(case, idx, v, x, gy, ts.DEFAULT_BLOCKS, target_programs=1)
    for name, g, w_ in zip(("forward", "dx", "dW"), got, oracles(case, idx, v, x, gy)):
        assert_close(g, w_, torch.float32, 300, name)


def poisoned(shape, dtype=torch.float32):
    """(buffer, view): a 4-D view with strides != contiguous inside a NaN-filled buffer."""
    n, c, h, w = shape
    buf = torch.full((n + 2, 2 * c + 1, h + 3, 2 * w + 3), float("nan"), dtype=dtype)
    return buf, buf[1:n + 1, 1:2 * c + 1:2, 2:h + 2, 1:2 * w + 1:2]


def guard_intact(buf, view):
    """Everything in ``buf`` outside ``view`` is still NaN."""
    inside = torch.zeros(buf.numel(), dtype=torch.bool)
    offset = (view.data_ptr() - buf.data_ptr()) // buf.element_size()
    flat = torch.as_strided(torch.arange(buf.numel()), view.shape, view.stride(), offset)
    inside[flat.reshape(-1)] = True
    return bool(torch.isnan(buf.view(-1)[~inside]).all())


def test_strided_poisoned_operands_no_stray_read_or_write():
    case = (2, 4, 7, 7, 9, (3, 3), (2, 2), (1, 1))
    idx, v, x, gy = problem(case, torch.float32, seed=5)
    want = oracles(case, idx, v, x, gy)
    _, xs = poisoned(x.shape)
    _, gs = poisoned(gy.shape)
    xs.copy_(x)
    gs.copy_(gy)
    y_buf, y = poisoned(gy.shape)
    dx_buf, dx = poisoned(x.shape)
    ts.forward(xs, v, idx, *case[5:], SMALL, check=True, out=y)
    t = ts.transpose_index(idx, 4, *case[5:])
    ts.backward_input(gs, v, t, (4, 7, 9), *case[5:], SMALL, check=True, out=dx)
    dv = ts.backward_weight(gs, xs, idx, *case[5:], SMALL, target_programs=4, check=True)
    assert guard_intact(y_buf, y) and guard_intact(dx_buf, dx), "a write outside the output"
    for name, g, w_, n in zip(("forward", "dx", "dW"), (y, dx, dv), want, (40, 70, 40)):
        assert_close(g, w_, torch.float32, n, name)


def test_out_of_range_index_entries_are_skipped():
    """A corrupt column (>= C*kh*kw) is never addressed and gets no gradient."""
    case = (2, 3, 5, 6, 6, (3, 3), (1, 1), (1, 1))
    idx, v, x, gy = problem(case, torch.float64, seed=2)
    bad = idx.clone()
    bad[2, 0] = 3 * 9
    keep = bad < 27
    got = run_all(case, bad, v, x, gy)
    clean = torch.where(keep, bad, -1)
    for name, g, w_ in zip(("forward", "dx", "dW"), got, oracles(case, clean, v, x, gy)):
        assert_close(g, w_, torch.float64, 60, name)
    assert got[2][2, 0] == 0


def test_address_check_fires_when_a_buffer_is_declared_too_small():
    case = (2, 3, 5, 6, 6, (3, 3), (1, 1), (1, 1))
    idx, v, x, _ = problem(case, torch.float32, seed=4)
    out = torch.empty(2, 5, 6, 6)
    err = torch.zeros(1, dtype=torch.int32)
    ts._fwd_kernel[(4,)](err, idx, v, x, out, 5, idx.shape[1], 3, 6, 6, 6, 6, 72,
                         **ts._geom((3, 3), (1, 1), (1, 1)), sxn=108, sxc=36, sxh=6, sxw=1,
                         son=180, soc=36, soh=6, sow=1, x_numel=x.numel() // 2,
                         out_numel=out.numel(), BLOCK_R=8, BLOCK_P=32, BLOCK_K=4,
                         ACC=ts.tk._acc(torch.float32), CHECK=True)
    with pytest.raises(IndexError, match="sconv read x out of bounds"):
        ts.tk._raise_if_flagged(err, ts.ERRORS)


def test_empty_batch_and_empty_layers():
    case = (0, 3, 4, 5, 5, (3, 3), (1, 1), (1, 1))
    idx, v, x, gy = problem(case, torch.float32)
    y, dx, dv = run_all(case, idx, v, x, gy)
    assert y.shape == (0, 4, 5, 5) and dx.shape == (0, 3, 5, 5)
    assert dv.shape == idx.shape and (dv == 0).all()
    i0, v0 = torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, 2)
    x1 = torch.randn(2, 3, 5, 5)
    assert ts.forward(x1, v0, i0, (3, 3), (1, 1), (1, 1), SMALL).shape == (2, 0, 5, 5)
    t0 = ts.transpose_index(i0, 3, (3, 3), (1, 1), (1, 1))
    dx0 = ts.backward_input(torch.zeros(2, 0, 5, 5), v0, t0, (3, 5, 5), (3, 3), (1, 1),
                            (1, 1), SMALL)
    assert dx0.shape == (2, 3, 5, 5) and (dx0 == 0).all()


def test_transpose_lists_each_valid_slot_once_under_its_phase():
    idx, *_ = problem(CASES[5], torch.float32)
    c, kernel, stride, padding = 3, (5, 3), (2, 2), (0, 2)
    ptr, code, pos = ts.transpose_index(idx, c, kernel, stride, padding)
    valid = int((idx >= 0).sum())
    assert ptr[0] == 0 and ptr[-1] == valid and (ptr[1:] >= ptr[:-1]).all()
    assert sorted(pos[:valid].tolist()) == torch.nonzero(idx.view(-1) >= 0).view(-1).tolist()
    for row in range(c * 4):
        for p in range(int(ptr[row]), int(ptr[row + 1])):
            col = int(idx.view(-1)[pos[p]])
            tap = col % 15
            assert col // 15 == row // 4 and int(code[p]) == int(pos[p]) // idx.shape[1] * 15 + tap
            assert ((tap // 3) % 2, (tap % 3 - 2) % 2) == divmod(row % 4, 2)


def test_triton_operators_pass_opcheck():
    from sparse_runner.kernels import gpu_sconv

    case = (1, 3, 4, 5, 5, (3, 3), (2, 2), (1, 1))
    idx, v, x, gy = problem(case, torch.float32)
    geom = [list(g) for g in case[5:]]
    t = ts.transpose_index(idx, case[1], *case[5:])
    for op, args in ((gpu_sconv.forward, (x, v, idx, *geom)),
                     (gpu_sconv.backward_input, (gy, v, *t, list(x.shape[1:]), *geom)),
                     (gpu_sconv.backward_weight, (gy, x, idx, *geom))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_cuda_registration_computes_the_operators_and_installs_them():
    """What register_cuda installs for sparse_run::sconv_* (called here on CPU tensors)."""
    from sparse_runner.kernels import gpu_sconv, sconv_ops

    case = (2, 3, 5, 5, 6, (3, 3), (1, 1), (1, 1))
    idx, v, x, gy = problem(case, torch.float64, seed=1)
    geom = [list(g) for g in case[5:]]
    impl = gpu_sconv.IMPLS
    got = (impl["sconv_forward"](x, v, idx, *geom),
           impl["sconv_backward_input"](gy, v, idx, list(x.shape[1:]), *geom),
           impl["sconv_backward_weight"](gy, x, idx, *geom))
    for name, g, w_ in zip(("forward", "dx", "dW"), got, oracles(case, idx, v, x, gy)):
        assert_close(g, w_, torch.float64, 100, name)
    with pytest.raises(TypeError, match="same dtype"):
        impl["sconv_forward"](x.float(), v, idx, *geom)
    gpu_sconv.register_cuda(sconv_ops._LIB)
    for name in impl:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_run::{name}", "CUDA")


def test_the_transpose_is_cached_per_index_tensor_and_version():
    """Built once per mask (not per call); an in-place index change or a new tensor rebuilds."""
    from sparse_runner.kernels import gpu_sconv

    idx, *_ = problem(CASES[3], torch.float32)
    geom = CASES[3][5:]
    first = gpu_sconv.transpose_for(idx, 5, *geom)
    assert gpu_sconv.transpose_for(idx, 5, *geom) is first
    assert gpu_sconv.transpose_for(idx, 5, (3, 3), (1, 1), (1, 1)) is not first  # geometry
    idx[1, 0] = -1  # an in-place mask update bumps the version counter
    rebuilt = gpu_sconv.transpose_for(idx, 5, *geom)
    want = ts.transpose_index(idx, 5, *geom)
    assert rebuilt is not first and all(torch.equal(a, b) for a, b in zip(rebuilt, want))
    copy = idx.clone()
    assert gpu_sconv.transpose_for(copy, 5, *geom) is not rebuilt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cases_cover_the_vector_and_the_strided_dw_paths(dtype):
    """CASES run the weight gradient's 16-byte path (Wo a multiple of 16 bytes) and the
    fallback; a column stride != 1 or an unaligned row stride takes the fallback."""
    vec = 16 // dtype.itemsize
    paths = {ts.position_vec(torch.empty(c[0], c[2], *ts.out_size(*c[3:5], *c[5:]), dtype=dtype),
                             SMALL.batch) for c in CASES}
    assert paths == {1, vec}
    ones = {ts.pointwise_vec(torch.empty(c[0], c[1], c[3], c[4], dtype=dtype), *c[5:],
                             SMALL.batch) for c in CASES if c[5] == (1, 1)}
    assert ones == {1, vec}  # W = 5 and W = 8
    g = torch.empty(2, 3, 4, 2 * vec, dtype=dtype)
    assert ts.pointwise_vec(g, (1, 1), (1, 1), (0, 0), SMALL.batch) == vec
    assert ts.pointwise_vec(g, (3, 3), (1, 1), (1, 1), SMALL.batch) == 1  # tap-shifted
    assert ts.pointwise_vec(g, (1, 1), (2, 2), (0, 0), SMALL.batch) == 1
    assert ts.position_vec(g, SMALL.batch) == vec
    assert ts.position_vec(g[..., ::2], SMALL.batch) == 1            # column stride 2
    assert ts.position_vec(torch.empty(2, 3, 4, vec + 1, dtype=dtype)[..., :vec], 16) == 1
    assert ts.position_vec(g, vec // 2) == 1                         # tile not a multiple


def _position_offsets(g, blocks, target_programs=None):
    """Offsets in ``g`` of the positions the tiles visit, computed as the kernels do:
    ``_dw_kernel``'s chunks of tiles (``target_programs`` given), else one tile per program
    (``_fwd_kernel`` / ``_dx_kernel``)."""
    from sparse_runner.kernels.gpu_grid import sddmm_split

    nb, _, ho, wo = g.shape
    n_pos = nb * ho * wo
    chunk = sddmm_split(8, n_pos, blocks, target_programs).chunk if target_programs else n_pos
    starts = [q0 for lo in range(0, n_pos, chunk)
              for q0 in range(lo, min(lo + chunk, n_pos), blocks.batch)]
    q = (torch.tensor(starts)[:, None] + torch.arange(blocks.batch)).reshape(-1)
    n, rem = q // (ho * wo), q % (ho * wo)
    return n * g.stride(0) + rem // wo * g.stride(2) + rem % wo * g.stride(3)


@pytest.mark.parametrize("programs", [3, None], ids=["dw_chunks", "fwd_dx_tiles"])
@pytest.mark.parametrize("wo", [8, 6], ids=["wo8", "wo6"])
def test_the_contiguity_hints_hold_exactly_where_they_are_given(wo, programs):
    """The kernels tell Triton the position offsets come in runs of VEC consecutive elements
    from multiples of VEC; the interpreter ignores hints, so the claim is checked here on
    the offsets themselves: true for every tile when position_vec gives VEC, false for an
    output width it refuses (a run crosses a row)."""
    g = torch.empty(3, 2, 5, wo)
    runs = _position_offsets(g, SMALL, programs).view(-1, 4)
    holds = bool(((runs[:, 1:] - runs[:, :-1]) == 1).all() and (runs[:, 0] % 4 == 0).all())
    assert holds == (ts.position_vec(g, SMALL.batch) == 4) == (wo == 8)


@pytest.mark.parametrize("case", [(2, 3, 5, 6, 6, (3, 3), (1, 1), (2, 2)),  # Wo = 8: dW
                                  (2, 5, 6, 3, 8, (1, 1), (1, 1), (0, 0))],  # 1x1: all three
                         ids=["3x3", "1x1"])
def test_vector_paths_read_only_their_views(case):
    """The 16-byte paths on views with an aligned row stride and NaN between the rows' runs
    (a read past a run brings NaN in), against float64."""
    idx, v, x, gy = problem(case, torch.float32, seed=6)

    def gapped(t):
        view = torch.full((*t.shape[:3], t.shape[3] + 8), float("nan"))[..., 4:4 + t.shape[3]]
        return view.copy_(t)

    xs, gs = gapped(x), gapped(gy)
    assert ts.position_vec(gs, SMALL.batch) == 4
    assert ts.pointwise_vec(xs, *case[5:], SMALL.batch) == (4 if case[5] == (1, 1) else 1)
    got = run_all(case, idx, v, xs, gs, target_programs=3)
    terms = (idx.shape[1], 6 * 9, 2 * 64)
    for name, g, w_, n in zip(("forward", "dx", "dW"), got, oracles(case, idx, v, x, gy), terms):
        assert_close(g, w_, torch.float32, n, name)
