"""Bad input to the kernels and the layer: a clear ValueError/TypeError, never a crash."""
from __future__ import annotations

import pytest
import torch

from sparse_runner.kernels import SparseLinear, build, packed, reference

ops = torch.ops.sparse_run
HAS_EXT = build.ensure("cpu") == "extension"

V = torch.randn(4, 3)
I = torch.tensor([[0, 2, 5], [1, 2, 3], [0, 1, 2], [3, 4, 5]], dtype=torch.int32)
X, G = torch.randn(2, 6), torch.randn(2, 4)
PACKED = packed.pack(V, I, 6)

# (name, op name, args, exception, message pattern)
CASES = [
    ("index_too_big", "cfi_forward", (X[:, :5], V, I, None), ValueError, r"indices must lie in"),
    ("index_negative", "cfi_forward", (X, V, -I, None), ValueError, r"indices must lie in"),
    ("k_zero", "cfi_forward", (X, V[:, :0], I[:, :0], None), ValueError, r"at least 1|k >= 1"),
    ("shape_mismatch", "cfi_forward", (X, V[:, :2], I, None), ValueError, r"same shape"),
    ("x_1d", "cfi_forward", (X[0], V, I, None), ValueError, r"2-D"),
    ("bias_shape", "cfi_forward", (X, V, I, torch.randn(5)), ValueError, r"bias"),
    ("dtype_mismatch", "cfi_forward", (X.double(), V, I, None), TypeError, r"same dtype"),
    ("int64_indices", "cfi_forward", (X, V, I.long(), None), TypeError, r"int32"),
    ("int_values", "cfi_forward", (X.int(), V.int(), I, None), TypeError, r"float32"),
    ("bwd_in_grad_shape", "cfi_backward_input", (G[:, :3], V, I, 6), ValueError, r"grad_out"),
    ("bwd_in_n_in_zero", "cfi_backward_input", (G, V, I, 0), ValueError, r"positive"),
    ("bwd_in_index", "cfi_backward_input", (G, V, I, 5), ValueError, r"indices must lie in"),
    ("bwd_in_t_index_size", "cfi_backward_input",
     (G, V, I, 6, torch.zeros(3, dtype=torch.int32)), ValueError, r"t_index"),
    ("bwd_w_batch", "cfi_backward_weight", (G, X[:1], I), ValueError, r"batch"),
    ("bwd_w_index", "cfi_backward_weight", (G, X[:, :4], I), ValueError, r"indices must lie in"),
    ("bwd_w_k_zero", "cfi_backward_weight", (G, X, I[:, :0]), ValueError, r"k >= 1"),
    ("transpose_index", "cfi_transpose_index", (I, 5), ValueError, r"indices must lie in"),
    ("packed_counts_shape", "cfi_forward_packed", (X, *PACKED[:2], PACKED[2][:, :0], None, 4),
     ValueError, r"counts must have shape"),
    ("packed_counts_sum", "cfi_forward_packed", (X, *PACKED[:2], PACKED[2] + 1, None, 4),
     ValueError, r"slots"),
    ("packed_float64", "cfi_forward_packed", (X.double(), *PACKED, None, 4), TypeError,
     r"float32 or bfloat16"),
]
REFERENCE = {"cfi_forward": reference.forward, "cfi_backward_input": reference.backward_input,
             "cfi_backward_weight": reference.backward_weight,
             "cfi_transpose_index": reference.transpose_index,
             "cfi_forward_packed": reference.forward_packed}


@pytest.mark.parametrize("path", ["kernel", "reference"])
@pytest.mark.parametrize("name,op,args,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(path, name, op, args, exc, pattern):
    if path == "kernel" and not HAS_EXT:
        pytest.skip("compiled CPU kernels unavailable")
    fn = getattr(ops, op) if path == "kernel" else REFERENCE[op]
    with pytest.raises(exc, match=pattern):
        fn(*args)


@pytest.mark.skipif(not HAS_EXT, reason="compiled CPU kernels unavailable")
def test_malformed_t_index_raises():
    t = ops.cfi_transpose_index(I, 6).clone()
    t[1], t[2] = t[2] + 5, 0  # non-monotonic row pointers
    with pytest.raises(ValueError, match="t_index"):
        ops.cfi_backward_input(G, V, I, 6, t)
    t = ops.cfi_transpose_index(I, 6).clone()
    t[7] = 99  # a row (output neuron) that does not exist
    with pytest.raises(ValueError, match="t_index"):
        ops.cfi_backward_input(G, V, I, 6, t)


def test_packed_forward_refuses_to_backprop():
    x = X.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.cfi_forward_packed(x, *PACKED, None, 4).sum().backward()
    with torch.no_grad():
        assert ops.cfi_forward_packed(x, *PACKED, None, 4).shape == (2, 4)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        SparseLinear(8, 4, 1.0)
    with pytest.raises(ValueError, match="positive"):
        SparseLinear(0, 4, 0.5)
    with pytest.raises(ValueError, match="unequal"):
        SparseLinear.from_dense(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="no nonzero"):
        SparseLinear.from_dense(torch.zeros(3, 4))
    layer = SparseLinear(8, 4, 0.5)
    with pytest.raises(ValueError, match=r"input \(\.\.\., 8\)"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer.set_mask(torch.ones(4, 9, dtype=torch.bool))
    state = layer.state_dict()
    state["indices"] = state["indices"].clone()
    state["indices"][0, 0] = 8
    with pytest.raises(ValueError, match="indices must lie in"):
        SparseLinear(8, 4, 0.5).load_state_dict(state)
    state["indices"][0, :] = 1
    with pytest.raises(ValueError, match="strictly increasing"):
        SparseLinear(8, 4, 0.5).load_state_dict(state)
