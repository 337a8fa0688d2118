"""The machine named under tables of times: CPU model from /proc/cpuinfo, cores, threads and whether bf16 is native."""

from __future__ import annotations

import os

import torch

from ptmkit.analysis.machine import cpu_model, device_text
from ptmkit.nn.autocast import cpu_has_fast_bf16


def test_cpu_model_reads_the_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13 64-Core Processor\n")
    assert cpu_model(str(info)) == "AMD EPYC 7B13 64-Core Processor"


def test_cpu_model_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    assert cpu_model(str(tmp_path / "missing")) != ""


def test_device_text_names_cores_threads_and_bf16():
    text = device_text("cpu", threads=3)
    assert text.startswith(cpu_model()) and f"{os.cpu_count()} cores, 3 threads" in text
    assert ("native bf16" if cpu_has_fast_bf16() else "bf16 emulated") in text
    assert "1 thread," in device_text("cpu", threads=1)
    assert f"{torch.get_num_threads()} thread" in device_text("cpu")
