"""--mixed_precision: auto picks bfloat16 only where the CPU computes it natively; weights stay float32."""
import keras
import pytest

import distribution


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("has_bf16,expected,policy", [(True, "bf16", "mixed_bfloat16"), (False, "fp32", "float32")])
def test_auto_follows_the_cpu(monkeypatch, has_bf16, expected, policy):
    monkeypatch.setattr(distribution, "cpu_has_bf16", lambda: has_bf16)
    assert distribution.configure_precision("auto") == expected
    assert keras.mixed_precision.global_policy().name == policy


@pytest.mark.parametrize("choice,policy", [("fp32", "float32"), ("bf16", "mixed_bfloat16"), ("fp16", "mixed_float16")])
def test_explicit_choices(choice, policy):
    assert distribution.configure_precision(choice) == choice
    assert keras.mixed_precision.global_policy().name == policy
