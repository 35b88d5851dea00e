"""The README contract and the installed wheel (configs and csrc travel inside the package)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < text.index("\n## "), "README opens with the commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_run_and_test_commands():
    install, test = readme_commands()
    assert "pip install" in install and "torch==2.14.1" in install and install.endswith("sparse-run")
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in [line.strip() for line in ci], ".ci/run must run the README's test command"


@pytest.mark.slow
def test_installed_wheel_runs_from_another_directory(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("sparse_run-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    assert (site / "sparse_runner" / "conf" / "config.yaml").is_file()
    assert list((site / "sparse_runner" / "conf" / "model").glob("*.yaml"))
    assert (site / "sparse_runner" / "methods" / "rigl.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import sys, sparse_runner, sparse_runner.cli as c; "
            "assert sparse_runner.__file__.startswith(sys.argv[1]), sparse_runner.__file__; "
            "sys.argv = ['sparse-run', *sys.argv[2:]]; c.main()")
    info = subprocess.run([sys.executable, "-c", code, str(site), "--info", "searchpath"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "pkg://sparse_runner.conf" in info.stdout
    dry = subprocess.run([sys.executable, "-c", code, str(site), "run.dry_run=true", "method=static",
                          "s=0.5", "model.base_width=8", "out_dir=dry"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert json.loads((work / "dry" / "summary.json").read_text())["status"] == "dry_run"
