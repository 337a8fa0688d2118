"""Parallel layouts: degrees resolve against the world size, and impossible layouts name the number to change."""

from __future__ import annotations

import pytest
import torch

from ptmkit.config import ConfigError, from_dict
from ptmkit.data.batches import RankSlice
from ptmkit.parallel.config import ParallelConfig, check_model


def test_dp_shard_fills_the_remaining_ranks():
    cfg = ParallelConfig(tp=2).resolve(8)
    assert (cfg.dp_replicate, cfg.dp_shard, cfg.tp, cfg.pp, cfg.dp) == (1, 4, 2, 1, 4)
    assert ParallelConfig(dp_replicate=2, dp_shard=2).resolve(4).dp == 4
    assert not ParallelConfig().resolve(1).enabled and ParallelConfig(dp_shard=2).resolve(2).enabled


@pytest.mark.parametrize("cfg, world, match", [
    (dict(tp=3), 4, "world size 4 is not divisible by dp_replicate x tp x pp = 1 x 3 x 1 = 3"),
    (dict(dp_shard=4), 2, "= 4 ranks, but the world size is 2; set parallel.dp_shard to -1 or to 2"),
    (dict(dp_replicate=2, pp=2), 2, "world size 2 is not divisible by dp_replicate x tp x pp = 2 x 1 x 2 = 4"),
    (dict(tp=2), 1, "world size 1 is not divisible"),
])
def test_layouts_that_do_not_fit_the_world_size(cfg, world, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        ParallelConfig(**cfg).resolve(world)


@pytest.mark.parametrize("layout, model, match", [
    (dict(tp=2), dict(num_heads=3), "tp = 2 does not divide the model's 3 attention heads"),
    (dict(tp=2), dict(num_kv_heads=1), "tp = 2 does not divide the model's 1 key/value heads"),
    (dict(tp=2), dict(intermediate_size=129), "does not divide the feed-forward width 129"),
    (dict(pp=4), dict(num_layers=2), "pp = 4 pipeline stages but the model has only 2 layers; use pp <= 2"),
    (dict(dp_shard=4), dict(batch_size=6), "batch_size 6 .* not divisible by the 4 data-parallel ranks"),
    (dict(pp=2, dp_shard=1), dict(batch_size=6), "per-rank batch 6 is not divisible by parallel.pp_microbatches = 4"),
])
def test_model_shapes_that_do_not_fit_the_layout(layout, model, match):
    shape = dict(num_layers=4, num_heads=4, num_kv_heads=None, intermediate_size=128, batch_size=8) | model
    world = layout.get("tp", 1) * layout.get("pp", 1) * max(layout.get("dp_shard", 1), 1)
    with pytest.raises(ConfigError, match=match):
        check_model(ParallelConfig(**layout).resolve(world), **shape)


@pytest.mark.parametrize("key, value, match", [
    ("tp", 0, "parallel.tp must be >= 1"), ("dp_shard", 0, "dp_shard must be >= 1 or -1"),
    ("pp_schedule", "zb", "gpipe or 1f1b"), ("fsdp_param_dtype", "int8", "fsdp_param_dtype must be one of"),
    ("backend", "mpi", "auto, gloo or nccl"),
])
def test_bad_settings(key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(ParallelConfig, {key: value})


class _Batches:
    batch_size = 4

    def __init__(self):
        self.n = 0

    def __next__(self):
        self.n += 1
        return {"input_ids": torch.arange(8).view(4, 2) + 100 * self.n, "scalar": torch.tensor(1.0)}

    def state_dict(self):
        return {"n": self.n}


def test_rank_slices_partition_each_global_batch():
    a, b = RankSlice(_Batches(), 0, 2), RankSlice(_Batches(), 1, 2)
    for _ in range(2):
        x, y = next(a), next(b)
        assert torch.equal(torch.cat([x["input_ids"], y["input_ids"]]), torch.arange(8).view(4, 2) + 100 * a.batches.n)
        assert x["scalar"].shape == ()
    with pytest.raises(ConfigError, match="global batch size 4 is not divisible by the 3"):
        RankSlice(_Batches(), 0, 3)


def test_pipeline_with_tensor_parallel_stops_with_a_message():
    from ptmkit.parallel.apply import parallelize
    from ptmkit.parallel.mesh import ParallelState

    state = ParallelState(ParallelConfig(pp=2, tp=2).resolve(4), rank=0, world_size=4, device=torch.device("cpu"),
                          mesh=None, dp_rank=0)
    with pytest.raises(ConfigError, match="parallel.pp > 1 together with parallel.tp > 1 is not supported yet"):
        parallelize(torch.nn.Linear(2, 2), state)


def test_pipeline_stages_split_the_blocks_evenly():
    from ptmkit.parallel.pipeline import DecoderStage, stage_layers

    assert [list(stage_layers(4, 3, s)) for s in range(3)] == [[0, 1], [2], [3]]
    assert [len(stage_layers(12, 4, s)) for s in range(4)] == [3, 3, 3, 3]
    from ptmkit.models import build_model, make_config

    bert = build_model("bert", make_config("bert", dict(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                                                         intermediate_size=32)), "masked-lm")
    with pytest.raises(ConfigError, match=r"pipeline parallelism supports causal LMs whose backbone declares supports_pipeline"):
        DecoderStage(bert, 0, 2)
