"""DDP, FSDP2 (ZeRO-3, CPU offload, mixed precision) and distributed checkpoints, launched with torchrun on gloo.

Tolerances: fp32 layouts reproduce the single-process losses of the same global batch to 1e-5 (only the order of
the gradient reduction differs); FSDP2 with bf16 compute copies of the parameters to 3e-2 (bf16 has 8 bits of
mantissa). Dropout is off, so the only randomness is the data order and masking, which every rank shares.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.recipes.pretrain import export_checkpoint
from tests.distributed.launch import (
    losses, pretrain_args, resume_in_one_process, torchrun, torchrun_many, write_config,
)
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slow

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


def _gpt2(corpus, steps=5, **train):  # noqa: F811
    return {
        "model": {"family": "gpt2", "config": {"hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                               "max_position_embeddings": 64, "embedding_dropout": 0.0, **NO_DROPOUT}},
        "data": {"train": str(corpus / "shards-bpe"), "tokenizer": str(corpus / "tok-bpe"), "seq_len": 32,
                 "batch_size": 8, "boundary": "mask"},
        "objective": {"name": "clm"},
        "train": {"steps": steps, "log_every": 1, "eval_every": 0, "checkpoint_every": steps, "precision": "fp32",
                  "progress_bar": False, **train},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2},
    }


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):  # noqa: F811
    """The single-process run every layout is compared with (8 steps, checkpoint at 4 in DCP format)."""
    from ptmkit.config import from_dict
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    d = tmp_path_factory.mktemp("reference")
    cfg = _gpt2(corpus, steps=8, checkpoint_every=4, checkpoint_format="dcp")
    pretrain(from_dict(PretrainConfig, {**cfg, "out": str(d / "run")}))
    return {"dir": d / "run", "losses": losses(d / "run"), "config": write_config(d / "gpt2.yaml", _gpt2(corpus, 8))}


LAYOUTS = {
    "ddp": ["--parallel.dp_replicate", "2", "--parallel.dp_shard", "1"],
    "fsdp2": ["--parallel.dp_shard", "2"],
    "fsdp2-zero2": ["--parallel.dp_shard", "2", "--parallel.reshard_after_forward", "false"],
    "fsdp2-cpu-offload": ["--parallel.dp_shard", "2", "--parallel.cpu_offload", "true"],
}


def _electra(corpus):  # noqa: F811
    cfg = _gpt2(corpus)
    cfg["model"] = {"family": "electra", "config": {"embedding_size": 32, "hidden_size": 64, "num_layers": 2,
                                                    "num_heads": 2, "intermediate_size": 128,
                                                    "max_position_embeddings": 64, **NO_DROPOUT}}
    cfg["data"].update(train=str(corpus / "shards-wordpiece"), tokenizer=str(corpus / "tok-wordpiece"),
                       boundary="no_cross")
    cfg["objective"] = {"name": "rtd"}
    return cfg


def _layer_drop(corpus):  # noqa: F811
    cfg = {**_gpt2(corpus, steps=6), "layer_drop": {"schedule": "constant", "rate": 0.4}}
    cfg["model"]["config"]["num_layers"] = 4
    return cfg


def _lamb(corpus):  # noqa: F811
    return {**_gpt2(corpus, steps=5), "optim": {"name": "lamb", "lr": 1e-2}}


@pytest.fixture(scope="module")
def two_ranks(reference, corpus, tmp_path_factory):  # noqa: F811
    """Every two-rank run of this file, in one torchrun launch (launch.torchrun_many): each test below checks its
    run's output. The folder of run NAME is two_ranks[NAME]."""
    d = tmp_path_factory.mktemp("two_ranks")
    one_to_two = d / "one_to_two"  # saved by one process (DCP format), resumed on two FSDP2 ranks
    (one_to_two / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference["dir"] / "checkpoints" / "step-00000004", one_to_two / "checkpoints" / "step-00000004")
    shutil.copy(reference["dir"] / "metrics.jsonl", one_to_two / "metrics.jsonl")
    ref, shard = reference["config"], ["--parallel.dp_shard", "2"]
    configs = {name: write_config(d / f"{name}.yaml", make(corpus))
               for name, make in (("electra", _electra), ("layer_drop", _layer_drop), ("lamb", _lamb))}
    runs = {**{layout: (ref, overrides) for layout, overrides in LAYOUTS.items()},
            "mixed": (ref, [*shard, "--parallel.fsdp_param_dtype", "bf16"]),
            "one_to_two": (ref, [*shard, "--resume"]),
            "two": (ref, [*shard, "--train.checkpoint_every", "4"]),
            "electra": (configs["electra"], shard),
            "drop-ddp": (configs["layer_drop"], LAYOUTS["ddp"]),
            "drop-fsdp2": (configs["layer_drop"], LAYOUTS["fsdp2"]),
            "lamb": (configs["lamb"], shard)}
    torchrun_many(2, [pretrain_args(config, d / name, *overrides) for name, (config, overrides) in runs.items()], d)
    return {name: d / name for name in runs}


def _single(cfg: dict, out):
    """The single-process run of the same config, in this process."""
    from ptmkit.config import from_dict
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    pretrain(from_dict(PretrainConfig, {**cfg, "out": str(out)}))
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_reproduces_the_single_process_loss_curve(reference, two_ranks, layout):
    got = losses(two_ranks[layout])
    assert len(got) == 8
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference["losses"]), rtol=0, atol=1e-5)


def test_fsdp2_mixed_precision_follows_the_curve(reference, two_ranks):
    got = losses(two_ranks["mixed"])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference["losses"]), rtol=0, atol=3e-2)
    assert got[-1] < got[0] - 0.5  # and it learns


def test_hsdp_on_four_ranks(reference, tmp_path):
    torchrun(4, reference["config"], tmp_path / "run", "--parallel.dp_replicate", "2", "--parallel.dp_shard", "2")
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "run")), torch.tensor(reference["losses"]),
                               rtol=0, atol=1e-5)


def test_dcp_checkpoints_reshard_between_one_and_two_ranks(reference, two_ranks, tmp_path):
    ref = reference["dir"]
    # saved by one process (DCP format), resumed on two FSDP2 ranks
    torch.testing.assert_close(torch.tensor(losses(two_ranks["one_to_two"])), torch.tensor(reference["losses"]),
                               rtol=0, atol=1e-5)

    # saved by two ranks, loaded by one process: the exported weights equal the gathered ones
    two = two_ranks["two"]
    exported = export_checkpoint(two / "checkpoints" / "step-00000008", tmp_path / "export")
    a, b = load_file(two / "model" / "model.safetensors"), load_file(f"{exported['model_dir']}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    single = load_file(ref / "model" / "model.safetensors")
    assert max((single[k] - a[k]).abs().max().item() for k in a) < 1e-4  # 8 Adam steps, reduction order only

    # ... and the two-rank step-4 checkpoint resumes in one process on the same curve
    two_to_one = resume_in_one_process(two, 4, reference["config"], tmp_path / "two_to_one")
    torch.testing.assert_close(torch.tensor(losses(two_to_one)), torch.tensor(reference["losses"]), rtol=0, atol=1e-5)


def test_fsdp2_trains_electra_with_its_generator_and_exports_both(corpus, two_ranks, tmp_path):  # noqa: F811
    """An objective with an auxiliary network sharing the embeddings: one FSDP2 root covers both networks."""
    _single(_electra(corpus), tmp_path / "single")
    fsdp_run = two_ranks["electra"]
    # the discriminator's loss is a mean over all tokens, the generator's over the masked ones, and the ranks are
    # weighted by the former: the sum (~40 = MLM + 50 x RTD) is reproduced to a few parts in a thousand
    torch.testing.assert_close(torch.tensor(losses(fsdp_run)), torch.tensor(losses(tmp_path / "single")),
                               rtol=5e-3, atol=0)
    # The exported values, not just their names. (1) Rank 0's export is the final checkpoint gathered from both
    # ranks, bit for bit. (2) Both networks follow the single-process run. Over these 5 steps Adam moves a weight by
    # at most about sum(lr_t) = 1.05e-2 (measured 1.05e-2; each network moves by 6-10 % of its norm), so two runs
    # from the same initial weights stay within 2 x 1.05e-2 per element (atol 2.5e-2, measured 1.3e-2), and the
    # small gradient differences above keep each network within 2 % of its norm (measured 0.5 % discriminator, 1 %
    # generator). A generator initialised differently from the single-process one (0.12 apart per element, 19 %),
    # an untrained network (6-10 %) or an export of other weights fails.
    gathered = export_checkpoint(fsdp_run / "checkpoints" / "step-00000005", tmp_path / "gathered")
    for name in ("generator", "model"):
        single = load_file(tmp_path / "single" / name / "model.safetensors")
        fsdp = load_file(fsdp_run / name / "model.safetensors")
        from_checkpoint = load_file(f"{gathered[f'{name}_dir']}/model.safetensors")
        assert fsdp.keys() == single.keys() == from_checkpoint.keys()
        for key in fsdp:
            assert torch.equal(fsdp[key], from_checkpoint[key]), f"{name}: export != final checkpoint at {key}"
        diff = sum(float((fsdp[k] - single[k]).square().sum()) for k in single) ** 0.5
        norm = sum(float(single[k].square().sum()) for k in single) ** 0.5
        assert diff <= 2e-2 * norm, f"{name}: ||fsdp - single|| = {diff / norm:.2%} of ||single|| (bound 2 %)"
        torch.testing.assert_close(fsdp, single, rtol=0, atol=2.5e-2,
                                   msg=lambda m, name=name: f"{name} vs the single-process run: {m}")


@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_layer_drop_skips_the_same_blocks_on_every_rank(corpus, two_ranks, tmp_path, layout):  # noqa: F811
    """Skip decisions depend on (seed, step) only, so FSDP2's per-block all-gathers match up across ranks and the
    run equals the single-process one; DDP finds the skipped blocks' unused parameters."""
    single = _single(_layer_drop(corpus), tmp_path / "single")
    torch.testing.assert_close(torch.tensor(losses(two_ranks[f"drop-{layout}"])), torch.tensor(losses(single)),
                               rtol=0, atol=1e-5)


def test_lamb_trust_ratios_use_the_global_norms_under_fsdp2(corpus, two_ranks, tmp_path):  # noqa: F811
    """LAMB's layer-wise trust ratio needs each parameter's whole norm; on FSDP2 shards it must not be a shard's."""
    single = _single(_lamb(corpus), tmp_path / "single")
    torch.testing.assert_close(torch.tensor(losses(two_ranks["lamb"])), torch.tensor(losses(single)),
                               rtol=0, atol=1e-5)
