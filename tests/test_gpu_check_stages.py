"""The swrn and ddp stages of scripts/gpu_check.sh on the CPU: the two-step float64 check
runs for real (condensed CPU kernels in place of Triton, a narrow model), the torchrun
command and the summary verdict are pure."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparse_runner.bench import _gpu_ddp, _gpu_swrn

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_script_limits_fit_nine_minutes():
    text = SCRIPT.read_text()
    stages = [int(n) for n in re.findall(r"^\s*stage \w+ (\d+)", text, re.M)]
    sanitizer = [int(n) for n in re.findall(r'check "sanitizer_\$tool" (\d+)', text)]
    assert len(stages) == 9 and len(sanitizer) == 1   # ddp included (multi-GPU machines)
    assert sum(stages) + 2 * sanitizer[0] <= 9 * 60 - 5
    assert "--nproc \"$NGPU\"" in text and "nvidia-smi -L" in text


@pytest.mark.slow
def test_two_step_check_passes_on_the_cpu_kernels():
    check = _gpu_swrn.correctness(device="cpu", width=8, stage="demo")
    assert check.status == "ok", check.line()
    assert check.value < 1e-4


def test_two_step_check_sees_a_wrong_kernel(monkeypatch):
    """Weights 0.1% off in one layer (a wrong kernel) fail the check."""
    real = _gpu_swrn.two_steps

    def skewed(device, dtype, backend, width):
        out = real(device, dtype, backend, width)
        if backend == "condensed":
            name = next(iter(out))
            out[name] = out[name] * 1.001
        return out

    monkeypatch.setattr(_gpu_swrn, "two_steps", skewed)
    check = _gpu_swrn.correctness(device="cpu", width=4, stage="demo")
    assert check.status == "fail" and check.value > 5e-4


def test_torchrun_command_and_verdict(tmp_path):
    cmd = _gpu_ddp.command(4, tmp_path)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert {"trainer.sync_bn=true", "distributed.backend=nccl", "trainer.grad_accum=2"} <= set(cmd)
    ok = {"status": "completed", "distributed": {"world_size": 4, "mask_hashes": ["a"] * 4}}
    assert _gpu_ddp.verdict(ok, 4)[0] == "ok"
    split = {**ok, "distributed": {"world_size": 4, "mask_hashes": ["a", "a", "b", "a"]}}
    assert _gpu_ddp.verdict(split, 4) == ("fail", "ranks hold different masks: "
                                                  "['a', 'a', 'b', 'a']")
    assert _gpu_ddp.verdict({"status": "failed", "error": "boom"}, 4)[0] == "fail"
