"""Pipeline parallelism (torch.distributed.pipelining GPipe and 1F1B) on gloo: the micro-batched pipeline optimises
the same loss as one process (micro-batches of equal token counts), with GPT-2's tied embedding/output matrix on
the first and last stage, a middle stage, FSDP2 inside each stage, and a checkpoint that resumes in one process."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.launch import losses, pretrain_args, resume_in_one_process, torchrun, torchrun_many, write_config
from tests.distributed.test_data_parallel import _gpt2
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):  # noqa: F811
    from ptmkit.config import from_dict
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    d = tmp_path_factory.mktemp("pp")
    cfg = _gpt2(corpus, steps=6, checkpoint_every=3)
    cfg["model"]["config"]["num_layers"] = 4
    cfg["data"]["boundary"] = "cross"  # unmasked rows: the stages pass hidden states only
    pretrain(from_dict(PretrainConfig, {**cfg, "out": str(d / "single")}))
    return {"dir": d / "single", "losses": losses(d / "single"), "config": write_config(d / "pp.yaml", cfg)}


TWO_STAGES = {
    "1f1b": ["--parallel.pp", "2", "--parallel.pp_schedule", "1f1b"],
    "gpipe": ["--parallel.pp", "2", "--parallel.pp_schedule", "gpipe", "--parallel.pp_microbatches", "8"],
    "resumable": ["--parallel.pp", "2"],  # the default schedule; its step-3 checkpoint resumes in one process
}


@pytest.fixture(scope="module")
def two_ranks(single, tmp_path_factory):
    """The two-rank runs of this file in one torchrun launch (launch.torchrun_many)."""
    d = tmp_path_factory.mktemp("pp_two_ranks")
    torchrun_many(2, [pretrain_args(single["config"], d / name, *args, "--parallel.dp_shard", "1")
                      for name, args in TWO_STAGES.items()], d)
    return {name: d / name for name in TWO_STAGES}


def _same_as_single(single, run):
    torch.testing.assert_close(torch.tensor(losses(run)), torch.tensor(single["losses"]), rtol=0, atol=1e-5)
    a = load_file(single["dir"] / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")  # merged from the stages
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_two_stages_reproduce_the_single_process_curve(single, two_ranks, schedule):
    _same_as_single(single, two_ranks[schedule])


@pytest.mark.parametrize("nproc, args", [
    (3, ["--parallel.pp", "3", "--parallel.pp_microbatches", "4", "--parallel.dp_shard", "1"]),  # 2, 1, 1 blocks
    (4, ["--parallel.pp", "2", "--parallel.dp_shard", "2", "--parallel.pp_microbatches", "2"]),
], ids=["three-stages", "pp-x-fsdp2"])
def test_pipeline_reproduces_the_single_process_curve(single, tmp_path, nproc, args):
    torchrun(nproc, single["config"], tmp_path / "run", *args)
    _same_as_single(single, tmp_path / "run")


def test_pipeline_checkpoint_resumes_in_one_process(single, two_ranks, tmp_path):
    resumed = resume_in_one_process(two_ranks["resumable"], 3, single["config"], tmp_path / "resumed")
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(single["losses"]), rtol=0, atol=1e-5)


def test_pipeline_refuses_what_it_cannot_run(corpus, tmp_path):  # noqa: F811
    cfg = _gpt2(corpus)
    cfg["model"] = {"family": "bert", "config": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                 "intermediate_size": 64, "max_position_embeddings": 64}}
    cfg["data"].update(train=str(corpus / "shards-wordpiece"), tokenizer=str(corpus / "tok-wordpiece"),
                       boundary="cross")
    cfg["objective"] = {"name": "mlm"}
    with pytest.raises(AssertionError, match="pipeline parallelism needs an objective with a pipeline_loss"):
        torchrun(2, write_config(tmp_path / "mlm.yaml", cfg), tmp_path / "mlm", "--parallel.pp", "2",
                 "--parallel.dp_shard", "1")
