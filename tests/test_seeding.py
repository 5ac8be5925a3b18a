"""train.precision `auto`: bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
import tensorflow as tf

from dcgan.core import seeding

AVX2 = "flags\t\t: fpu vme sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.mark.parametrize(("flags", "native"), [(AVX2, False), (SAPPHIRE_RAPIDS, True),
                                               ("flags : avx512f avx512_bf16\n", True),
                                               ("flags : avx512f avx512bw\n", False)])
def test_native_bfloat16_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            flags: str, native: bool) -> None:
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])  # no GPU
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags)
    assert seeding.native_bfloat16(cpuinfo) is native


def test_no_cpuinfo_means_float32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    assert seeding.native_bfloat16(tmp_path / "missing") is False


@pytest.mark.parametrize(("capability", "native"), [((7, 5), False), ((8, 0), True),
                                                    ((9, 0), True)])
def test_a_gpu_decides_by_its_compute_capability(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, capability: tuple,
                                                 native: bool) -> None:
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability})
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(SAPPHIRE_RAPIDS)  # the GPU trains, so its capability counts
    assert seeding.native_bfloat16(cpuinfo) is native


@pytest.mark.parametrize("native", [False, True])
def test_auto_resolves_and_explicit_policies_stay(monkeypatch: pytest.MonkeyPatch,
                                                  native: bool) -> None:
    monkeypatch.setattr(seeding, "native_bfloat16", lambda: native)
    assert seeding.resolve_precision("auto") == ("mixed_bfloat16" if native else "float32")
    for policy in ("float32", "mixed_bfloat16"):
        assert seeding.resolve_precision(policy) == policy


def test_set_precision_sets_and_returns_the_resolved_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeding, "native_bfloat16", lambda: False)
    try:
        assert seeding.set_precision("auto") == "float32"
        assert keras.mixed_precision.dtype_policy().name == "float32"
        seeding.seed_everything(0)  # seeding leaves the policy alone
        assert keras.mixed_precision.dtype_policy().name == "float32"
        assert seeding.set_precision("mixed_bfloat16") == "mixed_bfloat16"
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
