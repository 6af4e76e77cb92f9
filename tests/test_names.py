"""Names: project and run ids, and metric keys, are checked before anything is built."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gitruns
from gitruns.errors import InvalidNameError
from gitruns.refs import RUNS_PREFIX, RunRef, check_name
from gitruns.values import MAX_KEY, check_key, clean_row

UNSAFE_IDS = {
    "dot-dot": "..",
    "inner dot-dot": "a..b",
    "slash": "a/b",
    "backslash": "a\\b",
    "lock suffix": "run.lock",
    "trailing dot": "run.",
    "leading dash": "-run",
    "leading dot": ".run",
    "space": "my run",
    "NUL": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "DEL": "a\x7fb",
    "too long": "a" * 65,
    "empty": "",
    "non-ASCII": "rün",
    "CJK": "実験",
    "ref syntax": "a@{1}",
    "revision syntax": "a~1",
    "colon": "a:b",
    "glob": "a*",
    "question mark": "a?b",
}


def no_trace(repo: Path) -> bool:
    """Whether nothing run-specific was built in ``repo``."""
    runs = repo / "refs" / "heads" / "runs"
    data = repo / "gitruns"
    return not (runs.exists() and any(runs.rglob("*"))) and not (
        data.exists() and any(p.is_file() for p in data.rglob("*"))
    )


@pytest.mark.parametrize("name", UNSAFE_IDS.values(), ids=UNSAFE_IDS.keys())
def test_unsafe_project_and_run_ids_are_refused_before_anything_is_built(
    repo: Path, name: str
) -> None:
    with pytest.raises(InvalidNameError) as as_project:
        gitruns.init(project=name, repo=repo, save_code=False)
    with pytest.raises(InvalidNameError) as as_id:
        gitruns.init(project="ok", id=name, repo=repo, save_code=False)
    with pytest.raises(InvalidNameError):
        RunRef("ok", name)
    assert as_project.value.name == name and as_id.value.name == name
    assert as_id.value.kind == "run id"
    assert no_trace(repo)


@pytest.mark.parametrize(
    "name", ["a", "A-1", "run_2", "x.y", "1", "a" * 64, "a.lock.b", "sweep-lr0.1"]
)
def test_safe_ids_become_valid_git_refs(name: str) -> None:
    ref = RunRef("proj", name).ref
    done = subprocess.run(
        ["git", "check-ref-format", ref.decode()], capture_output=True, check=False
    )
    assert done.returncode == 0
    assert ref == RUNS_PREFIX + b"proj/" + name.encode()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aZ09._-", max_size=70) | st.text(max_size=70))
def test_any_accepted_id_is_a_valid_ref_under_the_runs_prefix(name: str) -> None:
    try:
        check_name("run id", name)
    except InvalidNameError as exc:
        assert exc.reason  # refused, and says why
        return
    ref = RunRef(name, name).ref
    assert ref.startswith(RUNS_PREFIX)
    assert ref[len(RUNS_PREFIX) :].count(b"/") == 1
    done = subprocess.run(
        ["git", "check-ref-format", ref.decode()], capture_output=True, check=False
    )
    assert done.returncode == 0, ref


def test_fork_and_lookup_specs_cannot_escape_the_runs_namespace(repo: Path) -> None:
    run = gitruns.init(project="p", id="src", repo=repo, save_code=False)
    run.log({"loss": 1.0})
    run.finish()
    for spec in ("../../HEAD?_step=0", "p/../src?_step=0", "p/src/..?_step=0"):
        with pytest.raises(gitruns.GitRunsError):
            gitruns.init(project="p", fork_from=spec, repo=repo, save_code=False)
    with pytest.raises(gitruns.GitRunsError):
        gitruns.Api(repo).run("../refs/heads/main")
    assert sorted(
        p.name for p in (repo / "refs" / "heads" / "runs" / "p").iterdir()
    ) == ["src"]


# -- metric keys ---------------------------------------------------------------

BAD_KEYS = {
    "empty": "",
    "int": 3,
    "None": None,
    "bytes": b"loss",
    "tuple": ("a", "b"),
    "NUL": "lo\x00ss",
    "newline": "lo\nss",
    "escape": "\x1b[31mred",
    "C1 control": "a\x85b",
    "too long": "k" * (MAX_KEY + 1),
    "reserved _step": "_step",
    "reserved prefix": "_runtime",
    "leading slash": "/loss",
    "trailing slash": "train/",
    "double slash": "train//loss",
    "lone surrogate": "loss\udc80",
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_metric_keys_are_refused_with_the_rule(key: object) -> None:
    with pytest.raises(InvalidNameError) as refused:
        clean_row({key: 1.0}, set())
    assert refused.value.kind == "metric key"
    assert refused.value.name == key
    assert str(refused.value).startswith("invalid metric key")


@pytest.mark.parametrize(
    "key",
    ["loss", "train/loss", "a/b/c", "val loss", "精度", "ε", "loss.v2", "k" * MAX_KEY],
)
def test_good_metric_keys_are_kept_as_they_are(key: str) -> None:
    assert check_key(key) == key
    assert clean_row({key: 1.0}, set()) == {key: 1.0}


def test_nested_dicts_are_namespaces_joined_by_slash() -> None:
    row = clean_row({"train": {"loss": 1.0, "opt": {"lr": 0.1}}, "epoch": 2}, set())
    assert row == {"train/loss": 1.0, "train/opt/lr": 0.1, "epoch": 2}


@pytest.mark.parametrize(
    "data",
    [
        {"train": {"loss": 1.0}, "train/loss": 2.0},
        {"train/loss": 2.0, "train": {"loss": 1.0}},
        {"a": {"b/c": 1.0}, "a/b": {"c": 2.0}},
    ],
)
def test_a_key_given_twice_in_one_call_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidNameError, match="given twice in one log"):
        clean_row(data, set())


def test_nested_keys_must_be_strings_and_obey_the_rules() -> None:
    with pytest.raises(InvalidNameError, match="nested under 'train' must be str"):
        clean_row({"train": {1: 1.0}}, set())
    with pytest.raises(InvalidNameError, match="reserved"):
        clean_row({"_hidden": {"x": 1.0}}, set())
    with pytest.raises(InvalidNameError, match="'/' separates namespaces"):
        clean_row({"train": {"": 1.0}}, set())


def test_a_refused_key_stores_nothing_and_the_run_goes_on(repo: Path) -> None:
    run = gitruns.init(project="p", id="keys", repo=repo, save_code=False)
    run.log({"loss": 1.0})
    with pytest.raises(InvalidNameError):
        run.log({"ok": 2.0, "_step": 5})
    assert run.step == 1
    run.log({"loss": 3.0})
    run.finish()
    rows = list(gitruns.Api(repo).run("p/keys").scan_history())
    assert [(r["_step"], r.get("loss"), "ok" in r) for r in rows] == [
        (0, 1.0, False),
        (1, 3.0, False),
    ]
