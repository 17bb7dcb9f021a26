"""benchmarks/ncu_lines.py on an excerpt of a real ncu report of the head backward (H200,
session 20): six instructions of three source lines, sums checked by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ncu_lines import main, per_line  # noqa: E402

DATA = Path(__file__).parent / "data" / "ncu"
SASS, LINES = DATA / "head_bwd_sass.csv", DATA / "head_bwd_lines.csv"


def test_metrics_are_summed_per_source_line():
    lines, totals = per_line(SASS, LINES)
    by_line = {(e.file, e.line): e for e in lines}
    assert set(by_line) == {("triton_head_backward.py", n) for n in (86, 96, 114)}
    dot = by_line["triton_head_backward.py", 114]
    assert dot.text.startswith("dpre += tl.dot(d_graw, tl.trans(w_g)")
    assert dot.totals == {"excess": 2 * 17772608, "shared": 2 * 20311552,
                          "stalls": 1066 + 22649, "instructions": 2 * 634736}
    assert dict(dot.shared_ops) == {"LDS.128": 2}
    assert dict(by_line["triton_head_backward.py", 86].shared_ops) == {"LDGSTS.E.BYPASS.128": 2}
    assert not by_line["triton_head_backward.py", 96].shared_ops  # a barrier and an FMUL
    assert totals == {"excess": 2 * 17772608 + 2 * 2072544, "shared": 2 * 20311552 + 2 * 2783520,
                      "stalls": 1066 + 22649 + 83 + 157 + 32 + 37, "instructions": 4 * 634736
                      + 2 * 158684}


def test_table_puts_the_dot_first(capsys):
    sys.argv = ["ncu_lines.py", str(SASS), str(LINES), "--top", "2"]
    main()
    out = capsys.readouterr().out
    first = out.split("by excess")[1].splitlines()[2]
    # 35,545,216 of 39,690,304 excess wavefronts
    assert "89.6%" in first and "triton_head_backward.py:114" in first and "LDS.128 x2" in first


def test_wrong_exports_are_named(tmp_path):
    with pytest.raises(ValueError, match="no instruction addresses"):
        per_line(SASS, SASS)
    without = tmp_path / "sass.csv"
    without.write_text(SASS.read_text().replace("L1 Wavefronts Shared Excessive", "Other"))
    with pytest.raises(ValueError, match="'L1 Wavefronts Shared Excessive'.* not collected"):
        per_line(without, LINES)
