"""The ``transformers`` config of ``model=hf``: where it comes from, what the dataset sets in it,
and how Sparse Wide scales it.

A config comes from exactly one of ``model.arch`` (a ``model_type``: ``AutoConfig.for_model``
with ``model.config`` overrides), ``model.config_path`` (a local ``config.json`` or a folder
holding one) or ``model.pretrained`` (a local folder or a hub id already in the hub cache;
``HF_HUB_OFFLINE=1`` is set first, so nothing is ever downloaded). Every mistake is one line.

Sparse Wide (:func:`widen`) follows the paper's Table 14 for GPT-3 Small: the hidden size grows
by k_sw with the head count kept (each head grows), the MLP width by k_sw. Per ``model_type``
(:data:`WIDE_KEYS`) it names the config keys of hidden size, MLP width, heads and head_dim;
rotary models round head_dim up so the rotary dimensions stay even; KV heads are kept, so a
grouped-query model keeps its grouping.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..utils.errors import UserError

INSTALL = "pip install -e \".[hf]\" (or pip install 'transformers>=4.45' safetensors)"


def transformers_module() -> Any:
    """``transformers``, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"model=hf needs the transformers package: {INSTALL}") from None
    return transformers


@dataclass(frozen=True)
class WideKeys:
    """Config keys Sparse Wide scales for one model_type (None: the architecture has none)."""

    hidden: str
    inner: str | None       # MLP width; None in the config means 4 x hidden
    heads: str
    head_dim: str | None    # set to hidden / heads when the config has the key
    rotary: bool            # rotary embeddings: int(head_dim x rotary fraction) must be even


_LLAMA = WideKeys("hidden_size", "intermediate_size", "num_attention_heads", "head_dim", True)
WIDE_KEYS: dict[str, WideKeys] = {
    "gpt2": WideKeys("n_embd", "n_inner", "n_head", None, False),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gpt_neox": WideKeys("hidden_size", "intermediate_size", "num_attention_heads", None, True),
}


def rotary_fraction(config: Any) -> float:
    """The share of each head rotary embeddings rotate (1.0 unless the config says less)."""
    for key in ("partial_rotary_factor", "rotary_pct"):
        if isinstance(getattr(config, key, None), (int, float)):
            return float(getattr(config, key))
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("partial_rotary_factor", 1.0)) if isinstance(rope, Mapping) else 1.0


def widen(config: Any, width: float) -> Any:
    """``config`` scaled to Sparse Wide width ``width`` (in place; returns it)."""
    keys = WIDE_KEYS.get(config.model_type)
    if keys is None:
        raise UserError(f"ift=wide on model=hf knows the width keys of "
                        f"{', '.join(sorted(WIDE_KEYS))}, not {config.model_type!r}; use "
                        "ift=parallel, factorized or doped, or add its keys to "
                        "sparse_runner/models/hf_config.py WIDE_KEYS (docs/models.md)")
    hidden, heads = int(getattr(config, keys.hidden)), int(getattr(config, keys.heads))
    base = int(hidden * float(width) + 1e-9)
    explicit = getattr(config, keys.head_dim, None) if keys.head_dim else None
    # a head_dim of its own (Qwen3: 128 at any hidden size) widens by itself
    own = explicit is not None and int(explicit) * heads != hidden
    head_dim = math.ceil(int(int(explicit) * heads * float(width) + 1e-9) / heads) if own \
        else math.ceil(base / heads)
    frac = rotary_fraction(config) if keys.rotary else 0.0
    while keys.rotary and int(head_dim * frac) % 2:
        head_dim += 1
    inner = getattr(config, keys.inner) if keys.inner else None
    setattr(config, keys.hidden, heads * math.ceil(base / heads) if own else heads * head_dim)
    if keys.inner:
        setattr(config, keys.inner, 4 * base if inner is None else int(inner * float(width) + 1e-9))
    if explicit is not None:
        setattr(config, keys.head_dim, head_dim)
    return config


def _close(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_causal_lm(tf: Any, config: Any, source: str) -> None:
    mapping = tf.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if config.model_type not in mapping:
        raise UserError(f"{source} is a {config.model_type!r} config, which has no causal "
                        f"language model in transformers{_close(config.model_type, list(mapping))}"
                        " (model=hf trains decoders such as gpt2, llama, qwen2, gpt_neox)")


def _config_file(path: Any, key: str) -> Path:
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"model.{key}={path}: no {f.name if p.is_dir() else 'file'} at {f}; give "
                        "a local config.json or a folder that holds one")
    return f


def pretrained_folder(tf: Any, name: Any) -> Path:
    """A local folder, or a hub id resolved in the hub cache only (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = Path(os.path.expanduser(str(name)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model.pretrained={name}: {p} has no config.json; give a folder "
                            "written by save_pretrained")
        return p.resolve()
    if p.is_absolute() or str(name).startswith(".") or str(name).count("/") > 1:
        raise UserError(f"model.pretrained={name}: no such folder; give a save_pretrained folder "
                        "or a hub id that is in the hub cache")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(name), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception:  # noqa: BLE001  (hub errors vary by version; all mean "not cached")
        raise UserError(f"model.pretrained={name}: not a local folder and not in the hub cache "
                        f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}); "
                        "sparse-run never downloads: fetch it first with huggingface-cli "
                        "download, or give a local folder") from None


def load_config(options: Mapping[str, Any]) -> tuple[Any, Path | None]:
    """(the config with ``model.config`` overrides applied, the pretrained folder or None)."""
    tf = transformers_module()
    arch, path, pretrained = (options.get(k) for k in ("arch", "config_path", "pretrained"))
    given = [k for k, v in (("arch", arch), ("config_path", path), ("pretrained", pretrained)) if v]
    if len(given) != 1:
        raise UserError("model=hf needs exactly one of model.arch=<model_type> (e.g. gpt2, "
                        "llama), model.config_path=<config.json> or model.pretrained=<folder>; "
                        f"got {', '.join('model.' + k for k in given) or 'none'}")
    overrides = dict(options.get("config") or {})
    folder = None
    if arch:
        types = list(tf.CONFIG_MAPPING.keys())
        if str(arch) not in types:
            raise UserError(f"model.arch={arch} is not a transformers model_type"
                            f"{_close(str(arch), types)}")
        cls, source = tf.CONFIG_MAPPING[str(arch)], f"model.arch={arch}"
        check_overrides(cls, overrides)
        config = cls(**overrides)  # derived sizes (head_dim) follow the overrides
    else:
        if path:
            f, source = _config_file(path, "config_path"), f"model.config_path={path}"
        else:
            folder, source = pretrained_folder(tf, pretrained), f"model.pretrained={pretrained}"
            f = folder / "config.json"
        config = _read_config(tf, f, source)
        check_overrides(type(config), overrides)
        config = type(config).from_dict({**config.to_dict(), **overrides})
    _check_causal_lm(tf, config, source)
    return config, folder


def _read_config(tf: Any, f: Path, source: str) -> Any:
    try:
        return tf.AutoConfig.from_pretrained(str(f.parent if f.name == "config.json" else f))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{source}: not a transformers config "
                        f"({str(exc).splitlines()[0][:160]})") from None


def check_overrides(cls: Any, overrides: Mapping[str, Any]) -> None:
    """``model.config.<key>``: a key the config class does not know is an error (typos)."""
    known = (set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
             | set(inspect.signature(cls.__init__).parameters))
    for key in overrides:
        if key not in known:
            raise UserError(f"model.config.{key}: a {cls.model_type} config has no key "
                            f"{key!r}{_close(key, sorted(known))}")
