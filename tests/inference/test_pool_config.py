"""Pool-config validation: bad shares and chains are refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from inference.pool_config import PoolConfig


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"class_shares": {"gpu": 0.7, "cpu": 0.7}}, "sum to 1"),
        ({"class_shares": {"gpu": 1.5, "cpu": -0.5}}, "between 0 and 1"),
        ({"class_shares": {"tpu": 1.0}}, "gpu"),
        ({"worker_shares": {"a": 0.8, "b": 0.5}}, "more than 1"),
        ({"catalog": []}, "catalog"),
        ({"fallbacks": {"m": ["m"]}}, "itself"),
        ({"fallbacks": {"m": ["x", "x"]}}, "repeats"),
        ({"queue_wait_s": -1}, "queue_wait_s"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_an_invalid_pool_config_is_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PoolConfig.model_validate(body)


def test_the_defaults_are_gpu_62_cpu_38_and_any_model() -> None:
    config = PoolConfig()
    assert config.class_shares == {"gpu": 0.62, "cpu": 0.38}
    assert config.allows("anything")
    assert not config.knows("anything")


def test_an_explicit_catalog_admits_only_its_models() -> None:
    config = PoolConfig(catalog=["a"], fallbacks={"b": ["a"]})
    assert config.allows("a")
    assert not config.allows("b")
    assert config.knows("b")
