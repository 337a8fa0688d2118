"""experiments/long_context.py: every kernel starts from the same weights, and a seconds-long study of two kernels (on
the demo's data at a tiny size, the demo_data fixture) writes its named results block without touching the rest of
the page."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.analysis.report import write_results_block
from tests.conftest import demo_args, load_experiment


def test_every_kernel_starts_from_the_same_weights():
    exp = load_experiment("long_context")
    args = exp.parse_args(["--hidden", "32", "--layers", "2", "--heads", "2", "--context", "64"])
    ref = exp.build(args, "sdpa", 100).state_dict()
    for kernel in args.kernels[1:]:
        state = exp.build(args, kernel, 100).state_dict()
        for name, tensor in ref.items():
            assert torch.equal(state[name], tensor), (kernel, name)


def test_unknown_or_non_causal_kernels_are_refused():
    exp = load_experiment("long_context")
    with pytest.raises(SystemExit):
        exp.parse_args(["--kernels", "sdpa,nope"])
    with pytest.raises(SystemExit):
        exp.parse_args(["--kernels", "sdpa,linformer"])  # bidirectional only


def test_named_results_blocks_share_a_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# P\n\n## A\n\n<!-- results:a:begin -->\nold a\n<!-- results:a:end -->\n\n## B\n")
    write_results_block(page, "new b", "P", name="b")
    write_results_block(page, "new a", "P", name="a")
    text = page.read_text()
    assert "old a" not in text and text.index("new a") < text.index("## B") < text.index("new b")


@pytest.mark.slow
def test_two_kernels_train_and_evaluate_for_a_few_steps(tmp_path, monkeypatch, demo_data):
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout
    exp = load_experiment("long_context")
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\nkept\n\n<!-- results:long-context:begin -->\nold\n<!-- results:long-context:end -->\n")
    argv = ["--kernels", "sdpa,lsh", "--hidden", "32", "--layers", "1", "--heads", "2", "--context", "64",
            "--steps", "2", "--warmup", "1", "--eval-batches", "2", "--threads", "1", *demo_args(demo_data),
            "--out", str(tmp_path / "run"), "--docs", str(doc)]
    out = exp.main(argv)
    assert [r["kernel"] for r in out["rows"]] == ["sdpa", "lsh"]
    for r in out["rows"]:
        assert r["steps"] == 2 and math.isfinite(r["ppl"]) and r["tokens"] == 2 * 8 * 64, r
    again = exp.main(argv)  # finished runs are reused, not retrained
    assert [r["ppl"] for r in again["rows"]] == [r["ppl"] for r in out["rows"]]
    text = doc.read_text()
    assert "kept" in text and "old" not in text and "| LSH (Reformer) |" in text
    assert (tmp_path / "page_long_context.png").exists()
    with pytest.raises(SystemExit, match="other settings"):
        exp.main([*argv[:-4], "--steps", "3", "--out", str(tmp_path / "run"), "--docs", ""])
