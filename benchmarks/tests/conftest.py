"""The benchmarks' tests share the product tests' fixtures (tests/conftest.py): every test
ends with Keras' float32 policy, whatever dtype policy a benchmark set. `no_torch` hides
the benchmark-only PyTorch."""

import importlib.metadata

import pytest
from conftest import float32_policy_after  # noqa: F401 (a fixture: pytest finds it by name)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if PyTorch were not installed: its version lookup fails as a missing package's."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: real("no-such-package")
                        if name == "torch" else real(name))
