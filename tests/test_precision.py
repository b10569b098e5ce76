import pytest
import torch

from synthaug.errors import SettingError
from synthaug.torch_utils import cpu_has_native_bf16, resolve_precision


def test_auto_keeps_fp32_where_onednn_is_limited_to_avx2(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_native_bf16()
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags = open("/proc/cpuinfo").read()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")


def test_explicit_precisions_pass_and_unknown_ones_are_named():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(SettingError, match="'fp8'"):
        resolve_precision("fp8", torch.device("cpu"), what="train.precision")
