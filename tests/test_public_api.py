"""The package root's ``__all__`` is honest: sorted, existing, and complete."""

from __future__ import annotations

import inspect
import types

import pytest

import gitruns


def test_all_is_sorted_and_unique() -> None:
    assert gitruns.__all__ == sorted(set(gitruns.__all__))


@pytest.mark.parametrize("name", gitruns.__all__)
def test_every_listed_name_exists(name: str) -> None:
    assert name in vars(gitruns), f"gitruns.__all__ lists {name!r}, which is missing"


def test_every_public_name_is_listed() -> None:
    public = {
        name
        for name, value in vars(gitruns).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(gitruns.__all__) == set()


@pytest.mark.parametrize(
    "name",
    [n for n in gitruns.__all__ if inspect.isclass(getattr(gitruns, n))]
    + [n for n in gitruns.__all__ if inspect.isfunction(getattr(gitruns, n))],
)
def test_public_classes_and_functions_have_docstrings(name: str) -> None:
    assert inspect.getdoc(getattr(gitruns, name))


def test_wandb_names_shadow_the_submodules() -> None:
    # ``gitruns.run`` and ``gitruns.summary`` are W&B's names, not submodules.
    assert gitruns.run is None or isinstance(gitruns.run, gitruns.Run)
    assert not isinstance(gitruns.summary, types.ModuleType)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from gitruns import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(gitruns.__all__)


def test_every_error_class_is_exported() -> None:
    from gitruns import errors

    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.GitRunsError)
    }
    assert classes - set(gitruns.__all__) == set()


def test_history_arguments_are_in_wandb_order() -> None:
    # A run view and an Api run read alike: W&B's order, positionally too.
    from gitruns.api import ApiRun

    for view in (gitruns.RunView, ApiRun):
        history = list(inspect.signature(view.history).parameters)
        scan = list(inspect.signature(view.scan_history).parameters)
        assert history[1:5] == ["samples", "keys", "x_axis", "pandas"]
        assert scan[1:5] == ["keys", "page_size", "min_step", "max_step"]
