"""Tensor parallelism (Megatron column/row split through parallelize_module) and 2-D FSDP2 x TP, on gloo.

fp32 without dropout: a TP run computes the same sums in another order (row-parallel partial sums are all-reduced),
so its losses equal the single-process run's to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.parallel.tensor import apply_tensor_parallel
from tests.distributed.launch import losses, pretrain_args, torchrun, torchrun_many, write_config
from tests.distributed.test_data_parallel import _gpt2, reference  # noqa: F401  (pytest fixture)
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slow


def _llama(corpus):  # noqa: F811
    cfg = _gpt2(corpus, steps=5)
    cfg["model"] = {"family": "llama", "config": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                                  "num_kv_heads": 2, "intermediate_size": 96,
                                                  "max_position_embeddings": 64}}
    return cfg


@pytest.fixture(scope="module")
def two_ranks(reference, corpus, tmp_path_factory):  # noqa: F811
    """The two-rank runs of this file in one torchrun launch (launch.torchrun_many)."""
    d = tmp_path_factory.mktemp("tp_two_ranks")
    tp = ["--parallel.tp", "2", "--parallel.dp_shard", "1"]
    torchrun_many(2, [pretrain_args(reference["config"], d / "gpt2", *tp),
                      pretrain_args(write_config(d / "llama.yaml", _llama(corpus)), d / "llama", *tp)], d)
    return {"gpt2": d / "gpt2", "llama": d / "llama"}


def test_tp_reproduces_the_single_process_curve_and_exports_the_same_model(reference, two_ranks):  # noqa: F811
    torch.testing.assert_close(torch.tensor(losses(two_ranks["gpt2"])), torch.tensor(reference["losses"]),
                               rtol=0, atol=1e-5)
    a = load_file(reference["dir"] / "model" / "model.safetensors")
    b = load_file(two_ranks["gpt2"] / "model" / "model.safetensors")  # gathered from the DTensor shards
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_fsdp2_x_tp_on_four_ranks(reference, tmp_path):  # noqa: F811
    torchrun(4, reference["config"], tmp_path / "2d", "--parallel.tp", "2", "--parallel.dp_shard", "2")
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "2d")), torch.tensor(reference["losses"]),
                               rtol=0, atol=1e-5)


def test_tp_splits_grouped_query_attention_and_the_gated_feed_forward(corpus, two_ranks, tmp_path):  # noqa: F811
    """LLaMA with 4 query heads sharing 2 key/value heads: each rank holds one whole group and its gate/up pairs."""
    from ptmkit.config import from_dict
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    pretrain(from_dict(PretrainConfig, {**_llama(corpus), "out": str(tmp_path / "single")}))
    torch.testing.assert_close(torch.tensor(losses(two_ranks["llama"])), torch.tensor(losses(tmp_path / "single")),
                               rtol=0, atol=1e-5)


def test_tp_refuses_families_it_cannot_split():
    cfg = make_config("bart", dict(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    with pytest.raises(ConfigError, match=r"tensor parallelism supports backbones that declare supports_tensor_parallel .* this model is \['bart'\]"):
        apply_tensor_parallel(build_model("bart", cfg, "base"), tp_mesh=None)
