"""The time-budgeted pre-training experiments train, at their cpu scale, in the precision the CPU computes natively:
emulated bf16 (a CPU without AVX512-BF16/AMX) runs an order of magnitude slower and would spend the budget on it."""

from __future__ import annotations

import pytest

from ptmkit.nn.autocast import cpu_has_fast_bf16
from tests.conftest import demo_args, load_experiment


@pytest.mark.parametrize("name", ["efficient_pretraining", "moe_vs_dense", "objectives_equal_compute"])
def test_cpu_scale_runs_in_the_native_precision_and_records_it(name, demo_data):
    exp = load_experiment(name)
    data = demo_args(demo_data)[:4] if name == "objectives_equal_compute" else demo_args(demo_data)  # no eval shards
    args = exp.parse_args([*data, "--device", "cpu"])
    assert args.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")  # resolved: plans and tables name it
    assert exp.parse_args([*data, "--device", "cpu", "--precision", "bf16"]).precision == "bf16"
