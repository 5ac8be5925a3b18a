"""Tests of benchmarks.kernels: the oneDNN profile of our train step."""

from __future__ import annotations

from benchmarks import kernels

LINES = [
    "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,jit_bf16:avx512_core_bf16,"
    "backward_weights,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb8_ic3oc4,2.5",
    "onednn_verbose,v1,primitive,exec,cpu,convolution,jit_bf16:avx512_core_bf16,"
    "backward_weights,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb8_ic4oc8,1.25",
    "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16,,,100x512,0.5",
    "onednn_verbose,v1,primitive,create:cache_miss,cpu,reorder,jit:uni,undef,src:bf16,,,1x2,9",
    "KERNELS-RESULT 12.5",
]


def test_kernel_totals_sum_executions_per_implementation() -> None:
    assert kernels._kernel_totals(LINES) == {
        "convolution jit_bf16:avx512_core_bf16 backward_weights": 3.75,
        "reorder jit:uni undef": 0.5}  # creations and info lines are not executions


def test_kernel_ms_profiles_a_real_step() -> None:
    profile = kernels.kernel_ms("float32", batch_size=16, image_size=32, steps=(2, 6))
    assert profile["step_ms"] > 0
    convolutions = [k for k in profile["onednn_ms"] if k.startswith("convolution")]
    assert any("forward" in k for k in convolutions), profile
    assert any("backward" in k for k in convolutions), profile
    assert profile["onednn_total_ms"] == round(sum(profile["onednn_ms"].values()), 1)
    assert abs(profile["onednn_total_ms"] + profile["rest_ms"] - profile["step_ms"]) < 0.2
