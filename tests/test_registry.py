"""The method table: every entry carries the tiny settings the generic tests fit it with (each
method's fit report is checked on those fits in test_methods.py)."""

from __future__ import annotations

import dataclasses

import pytest

import conftest

from adexport.methods import METHODS, MethodEntry
from adexport.methods.base import make_config


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_entry_has_tiny_test_options_that_build_its_config(name: str) -> None:
    entry = METHODS[name]
    config = make_config(entry.config_cls, dict(entry.test_options))  # every option exists and is in range
    assert config.image_size <= 64  # seconds on a CPU, not minutes
    if entry.trained:
        assert config.epochs <= 2
    assert getattr(config, "weights", "random") == "random"  # no download, no weights file
    with pytest.raises(TypeError):
        entry.test_options["image_size"] = 512  # type: ignore[index]  # shared by every test: read-only


def test_the_generic_tests_read_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert conftest.TEST_OPTIONS == {name: dict(e.test_options) for name, e in METHODS.items()}
    assert set(conftest.TINY_TRAINED) == {name for name, e in METHODS.items() if e.trained}
    # registering a method is what puts it under them
    eighth = dataclasses.replace(METHODS["riad"], name="eighth", test_options={"image_size": 32, "epochs": 1})
    monkeypatch.setitem(METHODS, "eighth", eighth)
    assert conftest.TEST_OPTIONS["eighth"] == {"image_size": 32, "epochs": 1}
    assert "eighth" in conftest.TINY_TRAINED


def test_an_entry_without_test_options_has_an_empty_read_only_mapping() -> None:
    entry = MethodEntry("x", "x", object, lambda *a, **k: None, METHODS["riad"].fitted_cls)  # type: ignore[arg-type]
    assert dict(entry.test_options) == {} and hash(entry) == hash(entry)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_fit_takes_the_feature_batch_by_its_own_name(name: str) -> None:
    """fit's inference batch is ``feature_batch_size``: a ``batch_size`` keyword would read as the
    optimiser's batch, which is the config's own ``batch_size`` field."""
    import inspect

    params = inspect.signature(METHODS[name].fit).parameters
    assert "feature_batch_size" in params and params["feature_batch_size"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "batch_size" not in params
