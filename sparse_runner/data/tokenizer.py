"""``dataset.tokenizer``: token ids from a ``tokenizers`` / ``transformers`` tokenizer instead of
characters (the text datasets' default).

The value is a local ``tokenizer.json`` or a folder holding one (what ``save_pretrained`` of a
fast tokenizer writes). Nothing is downloaded. The text is encoded line by line (lines keep their
newline, so no character is lost at a line break) with ``encode_batch``, which runs in Rust on
every core; the vocabulary is the tokenizer's, so the model's vocabulary follows it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import UserError

_INSTALL = "pip install -e \".[hf]\" (or pip install tokenizers)"


def load_tokenizer(path: Any) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` or a folder; one-line errors."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError(f"dataset.tokenizer needs the tokenizers package: {_INSTALL}") from None
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"dataset.tokenizer={path}: no {'tokenizer.json in ' if p.is_dir() else ''}"
                        f"{p}; give a tokenizer.json or a folder written by save_pretrained")
    try:
        return Tokenizer.from_file(str(f))
    except Exception as exc:  # noqa: BLE001  (the Rust side raises a bare Exception)
        raise UserError(f"dataset.tokenizer={path}: {f} is not a tokenizers file "
                        f"({str(exc).splitlines()[0][:120]})") from None


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of ``text`` as int64 (line by line, newlines kept)."""
    lines = text.splitlines(keepends=True)
    ids = [e.ids for e in tokenizer.encode_batch(lines, add_special_tokens=False)]
    return np.fromiter((i for row in ids for i in row), dtype=np.int64)
