"""Durable writes, torn JSON lines, OS errors as one-line user errors, robust summary reading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from disk_helpers import fill, remount_readonly, tmpfs
from sparse_runner.outputs import checkpoint as ckpt
from sparse_runner.outputs import fsio
from sparse_runner.utils.errors import UserError
from sparse_runner.outputs.loggers import MetricsFile


def test_atomic_write_replaces_and_fsyncs_the_directory(tmp_path, monkeypatch):
    synced = []
    real = fsio.fsync_dir
    monkeypatch.setattr(fsio, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    target = tmp_path / "sub" / "a.json"
    fsio.atomic_write_json(target, {"x": 1})
    fsio.atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert synced == [target.parent, target.parent]
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failing_serialiser_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    fsio.atomic_write(target, b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("serialiser bug")

    with pytest.raises(RuntimeError, match="serialiser bug"):
        fsio.atomic_write(target, boom)
    assert target.read_bytes() == b"old" and fsio.temp_files([tmp_path]) == []


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    m = MetricsFile(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        m.write({"step": step, "loss": 0.5})
    with open(m.path, "a") as f:
        f.write('{"step": 4, "lo')  # what a crash during an append leaves
    assert [e["step"] for e in m.read()] == [1, 2, 3]
    m.truncate_after(2)             # a resume from step 2 (failed with JSONDecodeError before)
    m.write({"step": 3, "loss": 0.25})
    assert m.path.read_text().count("\n") == 3
    assert [e["step"] for e in m.read()] == [1, 2, 3]
    m.truncate_after(10)            # torn tail with nothing to drop: still cut
    with open(m.path, "a") as f:
        f.write('{"st')
    m.truncate_after(10)
    assert m.path.read_text().endswith("}\n")


def test_a_bad_middle_line_is_skipped_not_fatal():
    records, end = fsio.split_jsonl('{"a": 1}\nnot json\n{"a": 2}\n{"a"')
    assert records == [{"a": 1}, {"a": 2}] and end == len('{"a": 1}\nnot json\n{"a": 2}\n')


def test_temp_files_of_interrupted_writes_are_found_and_cleaned(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"x" * 1000)
    (tmp_path / "keep.tmp").write_bytes(b"user file")   # not ours: not hidden
    (tmp_path / "last.pt").write_bytes(b"ok")
    assert fsio.clean_temp_files([tmp_path, tmp_path / "missing"]) == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "last.pt"]


@pytest.mark.parametrize("errno_name,words", [("ENOSPC", "no space left"),
                                              ("EROFS", "read-only"),
                                              ("EACCES", "permission denied"),
                                              ("ENOENT", "parent directory is missing")])
def test_io_errors_name_path_cause_and_fix(errno_name, words):
    import errno
    import os

    exc = OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))
    msg = str(fsio.io_error(exc, "/x/last.pt", "write the checkpoint"))
    assert msg.startswith("cannot write the checkpoint /x/last.pt: ") and words in msg
    assert "out_dir=" in msg and "\n" not in msg


def test_proc_is_not_a_writable_out_dir():
    with pytest.raises(UserError, match="cannot write the output directory /proc/x"):
        fsio.probe_dir(Path("/proc/x"))


def test_disk_full_checkpoint_is_a_user_error_and_keeps_the_previous(tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        small = {"w": torch.zeros(10)}
        ckpt.save(disk / "checkpoints" / "last.pt", small)
        fill(disk)
        with pytest.raises(UserError) as info:   # was: RuntimeError ... unexpected pos
            ckpt.save(disk / "checkpoints" / "last.pt", {"w": torch.randn(200_000)})
        msg = str(info.value)
        assert "no space left" in msg and str(disk / "checkpoints" / "last.pt") in msg
        assert torch.equal(torch.load(disk / "checkpoints" / "last.pt", weights_only=True)["w"],
                           small["w"])
        assert fsio.temp_files([disk / "checkpoints"]) == []
        with pytest.raises(UserError, match="no space left"):
            fsio.probe_dir(disk / "run")              # os.access says yes; a real write says no
        with pytest.raises(UserError, match="no space left"):
            MetricsFile(disk / "metrics.jsonl").write({"step": 1, "pad": "x" * 8192})


def test_read_only_checkpoints_is_a_user_error(tmp_path):
    with tmpfs(tmp_path / "ro") as ro:
        (ro / "checkpoints").mkdir()
        remount_readonly(ro)
        with pytest.raises(UserError, match="read-only"):
            ckpt.save(ro / "checkpoints" / "last.pt", {"w": torch.zeros(3)})
        with pytest.raises(UserError, match="read-only"):
            fsio.probe_dir(ro / "new_run")
        with pytest.raises(UserError, match="read-only"):
            ckpt.link_or_copy(ro / "checkpoints" / "last.pt", ro / "checkpoints" / "best.pt")


@pytest.mark.parametrize("content,reason", [
    (b"\x80\x04\x95binary\x00\xff", "not a text file"),
    (b"[1, 2]", "JSON list"),
    (b"", "empty"),
    (b'{"status": "comp', "not valid JSON"),
    (b'{"metrics": {}}', "no 'status'"),
])
def test_load_summary_skips_bad_files_with_one_warning(tmp_path, content, reason):
    path = tmp_path / "summary.json"
    path.write_bytes(content)
    warnings: list[str] = []
    assert fsio.load_summary(path, warn=warnings.append) is None
    assert len(warnings) == 1 and reason in warnings[0] and str(path) in warnings[0]


def test_load_summary_repairs_null_sections(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"status": "completed", "metrics": None, "model": [1],
                                "seed": 0}))
    warnings: list[str] = []
    s = fsio.load_summary(path, warn=warnings.append)
    assert s == {"status": "completed", "metrics": {}, "model": {}, "seed": 0}
    assert len(warnings) == 2
    assert fsio.load_summary(tmp_path / "missing.json", warn=warnings.append) is None
    assert "cannot read" in warnings[-1]


def test_disk_full_during_training_keeps_the_last_checkpoint_and_a_failed_summary(tmp_path):
    """The second epoch's checkpoint does not fit: one-line error, epoch 1's last.pt intact,
    summary.json says failed with the cause (was: a traceback from inline_container.cc)."""
    from conftest import run_tiny

    probe = run_tiny(tmp_path, "dataset=synthetic", "dataset.shape=[1,8,8]",
                     "dataset.num_samples=64", "dataset.num_test_samples=32",
                     "trainer.batch_size=32", name="probe")
    size = (tmp_path / "probe" / "checkpoints" / "last.pt").stat().st_size
    assert probe["status"] == "completed"
    args = ("dataset=synthetic", "dataset.shape=[1,8,8]", "dataset.num_samples=64",
            "dataset.num_test_samples=32", "trainer.batch_size=32", "trainer.epochs=2")
    with tmpfs(tmp_path / "disk", f"{(size * 3 // 2) // 4096 * 4096 + 16384}") as disk:
        with pytest.raises(UserError) as info:
            run_tiny(disk, *args)
        msg = str(info.value)
        assert "no space left" in msg and "last.pt" in msg and "\n" not in msg
        last = torch.load(disk / "run" / "checkpoints" / "last.pt", weights_only=True)
        assert last["epoch"] == 1
        summary = json.loads((disk / "run" / "summary.json").read_text())
        assert summary["status"] == "failed" and "no space left" in summary["error"]
        assert fsio.temp_files([disk / "run", disk / "run" / "checkpoints"]) == []


def test_a_failing_summary_write_never_hides_the_original_error(tmp_path, monkeypatch, capsys):
    import errno

    from conftest import run_tiny
    from sparse_runner import summary as sm

    def full(run_dir, summary):
        raise fsio.io_error(OSError(errno.ENOSPC, "full"), run_dir / "summary.json")

    monkeypatch.setattr(sm, "write", full)
    with pytest.raises(UserError, match="s=1.5 is outside"):
        run_tiny(tmp_path, "s=1.5", "method=static")
    err = capsys.readouterr().err
    assert "warning: no summary.json written" in err and "no space left" in err


def test_cli_read_only_out_dir_is_exit_2_in_one_line(tmp_path):
    from conftest import cli

    with tmpfs(tmp_path / "ro") as ro:
        remount_readonly(ro)
        proc = cli(f"out_dir={ro / 'run'}", "trainer.epochs=1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip() == (f"sparse-run: error: cannot write the output directory "
                                       f"{ro / 'run'}: the file system is read-only; choose a "
                                       "writable out_dir=<dir>")
