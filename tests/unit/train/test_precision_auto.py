"""precision "auto": bf16 autocast where the device computes bf16 natively, fp32 where it is emulated (an AVX2 CPU
ran a bf16 matmul 53x slower than fp32); an explicit bf16 there is honoured with a warning; runs record what they
computed in."""

from __future__ import annotations

import warnings

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.nn import autocast as precision
from ptmkit.train.loop import TrainConfig
from ptmkit.train.precision import Precision


@pytest.mark.parametrize("fast, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu(monkeypatch, fast, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert precision.resolve("auto", "cpu") == expected
    assert Precision("auto", torch.device("cpu")).mode == expected
    for mode in ("fp32", "fp16"):  # explicit choices are kept
        assert precision.resolve(mode, "cpu") == mode


def test_explicit_bf16_on_a_slow_cpu_warns_once_and_is_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    precision._warn_slow_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert precision.resolve("bf16", "cpu") == "bf16"
        assert precision.resolve("bf16", "cpu") == "bf16"
    slow = [w for w in seen if "emulates bf16" in str(w.message)]
    assert len(slow) == 1 and "'auto'" in str(slow[0].message)
    precision._warn_slow_bf16.cache_clear()


def test_bad_precision_names_the_choices():
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16"):
        precision.resolve("fp8", "cpu")
    with pytest.raises(ConfigError, match="auto, fp32, bf16 or fp16"):
        TrainConfig(precision="half")
    assert TrainConfig().precision == "auto"


def test_the_detection_matches_this_cpu():
    """The flags read are the ones torch itself reports; on x86 without AVX512-BF16/AMX auto is fp32."""
    fast = precision.cpu_has_fast_bf16()
    assert isinstance(fast, bool)
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        import platform

        if platform.machine().lower() in ("x86_64", "amd64"):
            assert not fast and precision.resolve("auto", "cpu") == "fp32"


def test_frozen_bf16_weights_need_bf16_compute(monkeypatch, tmp_path):
    from ptmkit.recipes.finetune import FinetuneConfig

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ConfigError, match="which is fp32 on cpu"):  # frozen bf16 weights need bf16 compute
        FinetuneConfig(model=str(tmp_path), task="sst2", out=str(tmp_path / "o"), method="lora", frozen_dtype="bf16",
                       device="cpu")
