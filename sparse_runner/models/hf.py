"""``model=hf``: any ``transformers`` causal language model, as a sparse-run text model.

:class:`HFCausalLM` wraps the ``transformers`` model so it maps token ids [B, T] to logits
[B, T, V] like ``model=gpt``. Two things make it fit the rest of sparse-run unchanged:

* GPT-2's ``transformers.pytorch_utils.Conv1D`` (a Linear with its weight stored transposed,
  [in, out]) is swapped for ``nn.Linear`` with the transposed weight at build time, so masks,
  methods, layer tables, kernels and IFT families see an ordinary Linear.
  :func:`to_transformers` swaps back when exporting, so the checkpoint is GPT-2's own layout.
* The LM head is moved first among the transformers model's children, so a tied weight is
  named ``hf.lm_head.weight`` (the head the layer table and the ``sparse.dense`` default see)
  and stays tied: the embedding and the head are one Parameter. (An alias of the head module
  on the wrapper would name it too, but ``torch.func.functional_call`` -- the meta trace --
  restores a module reached by two paths wrongly.)

The attention implementation is set explicitly (``model.attn_implementation``: ``sdpa`` by
default, or ``eager``) so the layer table counts exactly the op that runs. The meta-device
trace passes an explicit causal mask: transformers' mask code inspects position ids with a
data-dependent check a meta tensor cannot answer; the attention FLOPs are the same either way
(tests compare with FlopCounterMode on a real forward).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..utils.errors import UserError
from .base import options_only, takes
from .hf_config import load_config, transformers_module, widen

HF_KEYS = {"arch", "config", "config_path", "pretrained", "attn_implementation", "block_size"}
ATTN = ("sdpa", "eager")
_POSITION_KEYS = ("n_positions", "max_position_embeddings")


class HFCausalLM(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, vocab] of a transformers causal LM."""

    dense_layers = ("head",)  # the first Linear is an attention projection, not a stem

    def __init__(self, hf: nn.Module, transposed: tuple[str, ...] = ()) -> None:
        super().__init__()
        out = hf.get_output_embeddings()
        head = next((k for k, m in hf.named_children() if out is not None and m is out), None)
        if head is not None:  # see the module docstring
            hf._modules = {head: hf._modules[head], **hf._modules}
        self.hf = hf
        self.transposed = tuple(transposed)  # modules that were Conv1D in transformers

    @property
    def config(self) -> Any:
        return self.hf.config

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = None
        if idx.is_meta:  # see the module docstring
            t = idx.shape[1]
            mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()[None, None]
        return self.hf(input_ids=idx, attention_mask=mask, use_cache=False).logits


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def swap_conv1d(hf: nn.Module) -> tuple[str, ...]:
    """Replace every transformers Conv1D by an equal nn.Linear; returns their names."""
    conv1d = transformers_module().pytorch_utils.Conv1D
    names = []
    for name, mod in list(hf.named_modules()):
        if isinstance(mod, conv1d):
            lin = nn.Linear(mod.weight.shape[0], mod.weight.shape[1], bias=mod.bias is not None,
                            device=mod.weight.device, dtype=mod.weight.dtype)
            lin.weight = nn.Parameter(mod.weight.detach().t().contiguous())
            if mod.bias is not None:
                lin.bias = nn.Parameter(mod.bias.detach().clone())
            _set_module(hf, name, lin)
            names.append(name)
    return tuple(names)


def to_transformers(model: HFCausalLM) -> nn.Module:
    """A copy of the wrapped transformers model in its own layout (Conv1D swapped back)."""
    conv1d = transformers_module().pytorch_utils.Conv1D
    hf = copy.deepcopy(model.hf)
    for name in model.transposed:
        lin = hf.get_submodule(name)
        conv = conv1d(lin.out_features, lin.in_features)
        conv.weight = nn.Parameter(lin.weight.detach().t().contiguous())
        if lin.bias is not None:
            conv.bias = nn.Parameter(lin.bias.detach().clone())
        _set_module(hf, name, conv)
    return hf


def _fit_data(config: Any, vocab: int, seq_len: int, pretrained: bool) -> None:
    """The vocabulary follows the dataset; the positions must cover its windows."""
    if pretrained:
        if vocab > config.vocab_size:
            raise UserError(f"the dataset has {vocab} token ids but the pretrained model's "
                            f"vocabulary has {config.vocab_size}; tokenize with its tokenizer "
                            "(dataset.tokenizer=<the model folder>)")
    else:
        config.vocab_size = vocab
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value >= vocab:
                setattr(config, key, None)  # GPT-2's 50256 does not exist in a small vocabulary
    for key in _POSITION_KEYS:
        limit = getattr(config, key, None)
        if isinstance(limit, int) and seq_len > limit:
            raise UserError(f"dataset.block_size={seq_len} is longer than the model's {key}="
                            f"{limit}; set dataset.block_size<={limit} or model.config.{key}")


def build_config(options: dict[str, Any], vocab: int, seq_len: int, width_mult: float
                 ) -> tuple[Any, Any]:
    """(the transformers config this run trains, the pretrained folder or None)."""
    config, folder = load_config(options)
    if folder is not None and float(width_mult) != 1.0:
        raise UserError("ift=wide changes every weight's shape, so it cannot start from "
                        "model.pretrained; use model.config_path=<folder> (random init) or "
                        "ift=parallel, factorized or doped")
    _fit_data(config, vocab, seq_len, folder is not None)
    if float(width_mult) != 1.0:
        widen(config, width_mult)
    return config, folder


@takes("text")
def build_hf(*, num_classes: int, seq_len: int = 0, width_mult: float = 1.0,
             attn_implementation: str = "sdpa", in_channels: int = 0, image_size: int = 0,
             **options: Any) -> nn.Module:
    """A transformers causal LM for a vocabulary of ``num_classes`` tokens."""
    options_only({**options, "attn_implementation": attn_implementation}, HF_KEYS, "hf")
    if attn_implementation not in ATTN:
        raise UserError(f"model.attn_implementation={attn_implementation} is not one of "
                        f"{', '.join(ATTN)} (the ones whose FLOPs sparse-run counts)")
    tf = transformers_module()
    config, folder = build_config(options, num_classes, seq_len, width_mult)
    if folder is None or torch.empty(0).device.type == "meta":  # meta: shapes only (tables)
        hf = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    else:
        hf = tf.AutoModelForCausalLM.from_pretrained(
            str(folder), config=config, attn_implementation=attn_implementation,
            local_files_only=True)
    hf = hf.float()
    return HFCausalLM(hf, swap_conv1d(hf))
