"""Every method's whole training step, mask updates included, is free of host syncs and of
device mismatches: run on the ``meta`` device (where any host read or CPU tensor in the math
raises) and counted on the CPU (zero host reads on the steps without a mask event).

The only host reads allowed are the explicit ones of ``sparse_runner.sparsity.host``, on the
steps whose ``after_optimizer_step`` returns an event (mask updates, L0's density reports);
ALLOWED lists their reasons.
"""
from __future__ import annotations

import pytest

from meta_helpers import (Config, HostReads, Record, build, recording, replaying, run_steps,
                          to_meta)
from sparse_runner.methods import METHODS

ALLOWED = {
    "nonzeros of the masks changed since the last count",
    "mask-update event: grown positions and ITOP coverage",
    "nonzeros per layer of a global ranking",
    "top-k candidates above a sampled threshold", "top-k candidates at the threshold",
    "SRigL: salient-weight count of the neuron at the budget rank",
    "SRigL: ablated neurons and the weights they leave", "mask-update event: ablated neurons",
    "N:M mask change: positions that moved",
    "L0 density event: mean penalty weight", "L0 density event: expected gate densities",
    "condensed layer: ELL width of a new mask",
}
METHOD_NAMES = ["dense", "static", "set", "rigl", "srigl", "granet", "snip", "grasp", "force",
                "nm", "l0"]
# each method and backend runs these three: both optimizers, both accumulations, all precisions
VARIANTS = [("sgd", 1, "fp32"), ("adamw", 2, "bf16"), ("sgd", 2, "fp16")]
# updates (events) each method makes in tests' STEPS steps: the test must cross several
MIN_EVENTS = {"set": 3, "rigl": 3, "srigl": 3, "granet": 3, "nm": 3, "l0": 3}
# The transposable N:M solver (augmenting paths, data-dependent loops) reads on the host at
# its mask updates outside sparsity/host.py; the CPU count below shows that these reads happen
# on update steps only. The meta run uses the plain (row) N:M mask instead.
META_OPTIONS = {"nm": {"transposable": False}}


def configs() -> list[Config]:
    out = []
    for name in METHOD_NAMES:
        backends = ["masked"] if (name == "dense" or METHODS.get(name).condensed_unsupported) \
            else ["masked", "condensed"]
        for backend in backends:
            for opt, accum, precision in VARIANTS:
                out.append(Config(name, backend, opt, accum, precision))
    return out


def _id(c: Config) -> str:
    return f"{c.method}-{c.backend}-{c.optimizer}-a{c.accum}-{c.precision}"


def test_every_method_is_covered():
    assert set(METHOD_NAMES) == set(METHODS.names()) - {"auto"}


@pytest.mark.parametrize("cfg", configs(), ids=_id)
def test_step_is_device_clean(cfg: Config):
    """CPU run under a dispatch-mode counter: no host read on a step without a mask event,
    and every explicit read of sparsity/host.py is on an event step, for a listed reason.
    Then the same run on ``meta``: those reads replayed, any other one (or a CPU tensor in
    the math) raises."""
    cfg.options = META_OPTIONS.get(cfg.method, {})
    cpu, rec = _cpu_run(cfg)
    model, method, opt = build(cfg)
    to_meta(model, method, opt)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    fp16_unfused: list[int] = []
    with replaying(rec, fp16_unfused):
        meta = run_steps(cfg, model, method, opt, rec, "meta")
    assert [e for e, _ in meta] == [e for e, _ in cpu]
    assert fp16_unfused == (list(range(len(meta))) if cfg.precision == "fp16" else [])
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_transposable_nm_reads_only_at_its_mask_updates():
    """The default N:M (transposable solver, META_OPTIONS) on the CPU counter only."""
    _cpu_run(Config("nm", optimizer="adamw", accum=2), solver_reads=True)


def _cpu_run(cfg: Config, solver_reads: bool = False) -> tuple[list, Record]:
    model, method, opt = build(cfg)
    rec, mode = Record(), HostReads()
    with recording(rec, mode), mode:
        steps = run_steps(cfg, model, method, opt, rec, "cpu", mode)
    events = [i for i, (event, _) in enumerate(steps) if event]
    assert len(events) >= MIN_EVENTS.get(cfg.method, 0), events
    quiet = {i: seen for i, (event, seen) in enumerate(steps) if not event and seen}
    assert quiet == {}, f"host reads on steps without a mask update: {quiet}"
    assert {step for step, _, _ in rec.reads} <= set(events)
    assert {why for _, why, _ in rec.reads} <= ALLOWED
    loud = {i: seen for i, (event, seen) in enumerate(steps) if seen}
    assert bool(loud) == solver_reads, f"host reads outside sparsity/host.py: {loud}"
    return steps, rec
