"""benchmarks/text_to_image_speed.py: captions to pixels, this tree against an earlier commit's library."""

from __future__ import annotations

import json

import pytest

from benchmarks.model_sizes import stage2_setting
from tests.procs import ROOT
from tests.test_train_benchmark import git_worktrees, load_benchmark


def test_times_codes_and_decode_of_both_trees_and_reports_the_speedup(tmp_path, capsys):
    bench = load_benchmark("text_to_image_speed")
    out = tmp_path / "t2i.json"
    worktrees_before = git_worktrees()
    args = ["--baseline-ref", "HEAD", "--batch", "3", "--repeats", "1", "--threads", "1", "--out", str(out)]
    report = bench.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [row["guidance_scale"] for row in report["results"]] == [1.0, 3.0]
    for row in report["results"]:
        (timed,) = row["rounds"]
        assert timed["this_tree"]["library"] == str(ROOT)
        assert timed["baseline"]["library"] != str(ROOT)  # the commit's library, from its worktree
        # both trees time one model size, this tree's tiny config's, whatever the commit's configs say
        assert timed["this_tree"]["params"] == timed["baseline"]["params"]
        for side in timed.values():
            assert side["batch"] == 3 and side["codes_s"] > 0 and side["decode_s"] > 0
            assert (
                side["hidden_size"] == report["hidden_size"] == stage2_setting("tiny", "cpu")[0].hidden_size
            )
            assert side["seconds"] == pytest.approx(side["codes_s"] + side["decode_s"])
        assert row["speedup"] == pytest.approx(row["images_per_s"] / row["baseline_images_per_s"])
    assert "speedup" in capsys.readouterr().out
    assert git_worktrees() == worktrees_before  # the baseline's worktree is removed


def test_a_ref_git_cannot_check_out_is_one_clear_line():
    bench = load_benchmark("text_to_image_speed")
    worktrees_before = git_worktrees()
    with pytest.raises(SystemExit, match="--baseline-ref 'no-such-ref' cannot be checked out: .*no-such-ref"):
        bench.main(["--baseline-ref", "no-such-ref", "--batch", "1", "--repeats", "1"])
    assert git_worktrees() == worktrees_before


def test_no_speedup_between_models_of_different_sizes():
    summarise = load_benchmark("text_to_image_speed").summarise
    side = {"images_per_s": 100.0, "codes_s": 1.0, "decode_s": 1.0}
    with pytest.raises(SystemExit, match="do not compare"):
        summarise(1.0, [({**side, "params": 12}, {**side, "params": 10})])
