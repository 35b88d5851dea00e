"""``sparse-run-report ift-table model=<preset>``: the member sizes of any model family."""
from __future__ import annotations

from sparse_runner import report


def test_ift_table_for_gpt3_small(capsys):
    assert report.main(["ift-table", "model=gpt3_small", "dataset=shakespeare",
                        "model.block_size=128", "--s", "0.5", "0.75", "--members", "wide"]) == 0
    out = capsys.readouterr().out
    assert "Sparse-IFT members of gpt for input 128" in out
    assert "| wide | 0.5 | d_model 1092 (k_sw=1.414)" in out
    assert "| wide | 0.75 | d_model 1536 (k_sw=2.000)" in out


def test_ift_table_for_a_timm_preset(capsys):
    assert report.main(["ift-table", "model=mobilenetv2", "--dataset", "cifar100", "--s", "0.5",
                        "--members", "parallel"]) == 0
    out = capsys.readouterr().out
    assert "members of mobilenetv2_100" in out and "| parallel | 0.5 | b=2 |" in out


def test_ift_table_bad_override(capsys):
    assert report.main(["ift-table", "modle.arch=x"]) == 2
    assert "ift-table does not understand 'modle.arch=x'" in capsys.readouterr().err
