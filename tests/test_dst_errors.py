"""Bad input to the sparse methods: one clear line naming the fix, exit code != 0."""
from __future__ import annotations

import json

import pytest

from conftest import TINY, cli, run_tiny
from sparse_runner.utils.errors import UserError


@pytest.mark.parametrize("overrides,message", [
    (("method=rigl", "s=1.0"), "outside"),
    (("method=srigl", "s=-0.2"), "outside"),
    (("method=rigl", "s=0.9", "method.t_end=0"), r"t_end=0(\.0)? must be in"),
    (("method=set", "s=0.9", "method.t_end=-1"), r"t_end=-1(\.0)? must be in"),
    (("method=srigl", "s=0.99"), "constant fan-in of layer"),
    (("method=rigl", "s=0.9", "distribution.name=lognormal"), "unknown distribution"),
    (("method=static", "s=0.9", "method.fan_in=diagonal"), "fan_in"),
])
def test_bad_input_is_one_line(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as info:
        run_tiny(tmp_path, *overrides, "run.dry_run=true")
    assert "\n" not in str(info.value)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("args,word", [
    (("method=rigl", "s=1.5"), "s=1.5"),
    (("method=srigl", "s=0.9", "distribution=lognormal"), "uniform"),
    (("method=rigl", "s=0.9", "method.t_end=0"), "t_end"),
])
def test_cli_exits_with_one_line(tmp_path, args, word):
    proc = cli(*args, f"out_dir={tmp_path / 'x'}", *TINY)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("sparse-run: error:") and word in lines[0]


def test_unknown_method_option_is_one_line_with_the_closest_key():
    from sparse_runner.methods import build_method

    with pytest.raises(UserError, match=r"no option 'delta'; did you mean method\.delta_t\?") as info:
        build_method({"name": "rigl", "delta": 5})
    assert "\n" not in str(info.value) and "grad_accumulation_n" in str(info.value)


def test_every_method_option_default_is_written_once():
    """The Hydra schema of method=<name> is its options dataclass: same keys, same defaults."""
    from conftest import compose
    from sparse_runner.methods import METHODS, build_method

    for name in METHODS.names():
        cfg = compose([f"method={name}"]).method
        opts = build_method({"name": name}).opts
        assert {k: cfg[k] for k in cfg} == vars(opts), name
