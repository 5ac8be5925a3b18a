"""The benchmarks' tests share the product tests' fixtures (tests/conftest.py): every test
ends with Keras' float32 policy, whatever dtype policy a benchmark set."""

from conftest import float32_policy_after  # noqa: F401 (a fixture: pytest finds it by name)
