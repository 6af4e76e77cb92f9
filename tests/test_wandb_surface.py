"""The W&B surface: typical W&B scripts on ``import gitruns as wandb``, and parts."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gitruns
from gitruns.api import ApiRun
from gitruns.errors import GitRunsError, InvalidValueError, RunLockedError
from gitruns.files import MAX_SAVE_BYTES
from gitruns.summary import visible
from tests.conftest import REAL_RUNS

# ``import gitruns.run as m`` would give the current run (None), as in W&B.
run_module = importlib.import_module("gitruns.run")

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # No test may find the project's own repository, or a user's settings.
    monkeypatch.chdir(tmp_path)
    for name in ("GITRUNS_REPO", "GITRUNS_PROJECT", "GITRUNS_MODE"):
        monkeypatch.delenv(name, raising=False)
    yield
    for run in reversed(run_module.active_runs()):
        run.finish()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return done.stdout


def run_script(
    name: str,
    repo: Path | None,
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    expect: int = 0,
) -> tuple[dict[str, Any], str]:
    """Run ``tests/scripts/<name>`` as W&B would be run; return its JSON and stderr."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GITRUNS_", "MODE"))
    }
    if repo is not None:
        full_env["GITRUNS_REPO"] = str(repo)
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == expect, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), done.stderr


# -- the typical scripts, as subprocesses -------------------------------------


def test_training_script_with_argparse_config(repo: Path, tmp_path: Path) -> None:
    out, stderr = run_script(
        "train_mlp.py", repo, tmp_path, "--lr", "0.2", "--epochs", "2"
    )
    run = gitruns.Api(repo=repo).run(out["path"])

    assert run.state == "finished"
    assert run.info["exit_code"] == 0
    assert run.config == {
        "lr": 0.2,
        "epochs": 2,
        "batch_size": 32,
        "hidden": 16,
        "seed": 0,
        "n_params": 4 * 16 + 16 * 3,
    }
    assert run.tags == ["baseline", "numpy"]
    assert (run.group, run.job_type, run.entity) == ("mlp-blobs", "train", "my-team")
    assert run.notes == "two-layer MLP on blobs"
    assert run.summary["best_val_acc"] == out["best"]
    assert run.last_step == out["step"] - 1

    # 15 batches of 32 per epoch plus one validation step each.
    val = run.history(keys=["val/acc"], pandas=False)
    assert [row["_step"] for row in val] == [15, 31]
    assert all("examples" not in row for row in run.scan_history())
    assert stderr.count("'examples' is a wandb.Image") == 1

    branch = f"runs/{run.path}"
    card = git(repo, "show", f"{branch}:files/model_card.md")
    assert card.startswith("# MLP") and f"{out['best']:.3f}" in card
    weights = json.loads(git(repo, "show", f"{branch}:files/weights.json"))
    assert len(weights["w1"]) == 4
    script = git(repo, "show", f"{branch}:files/code/train_mlp.py")
    assert script == (SCRIPTS / "train_mlp.py").read_text()
    git(repo, "fsck", "--strict")


def test_eval_script_summaries_by_define_metric(repo: Path, tmp_path: Path) -> None:
    out, _ = run_script("eval_best.py", repo, tmp_path)
    run = gitruns.Api(repo=repo).run(out["id"])
    summary = run.summary

    assert summary["val/acc"] == {"max": 0.83}
    assert summary["val/f1"] == {"max": pytest.approx(0.78)}
    assert summary["val/loss"] == {
        "min": pytest.approx(0.17),
        "last": pytest.approx(0.19),
    }
    losses = [1.0 / (1 + e * 4 + b) for e in range(5) for b in range(4)]
    assert summary["train/loss"] == {"mean": pytest.approx(sum(losses) / 20)}
    assert "debug/lr" not in summary
    assert summary["test/acc"] == 0.8
    assert out["live"]["val/acc"] == {"max": 0.83}

    # Hidden metrics stay in the data, out of what people are shown.
    metrics = run.info["metrics"]
    assert summary["train/seen"] == 640
    assert "train/seen" not in visible(summary, metrics)
    assert "val/acc" in visible(summary, metrics)

    # The step metric is the x axis of the validation curve.
    assert metrics["val/*"]["step_metric"] == "epoch"
    frame = run.history(keys=["val/acc"], x_axis="epoch")
    assert list(frame.columns[:1]) == ["epoch"]
    assert frame["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert frame["val/acc"].tolist() == [0.50, 0.71, 0.83, 0.79, 0.81]


def test_sweep_script_runs_one_run_per_config(repo: Path, tmp_path: Path) -> None:
    out, _ = run_script("sweep.py", repo, tmp_path)
    api = gitruns.Api(repo=repo)
    runs = {run.id: run for run in api.runs("sweep")}

    assert sorted(runs) == sorted(out["ids"])
    # reinit finished the first two; atexit finished the last.
    assert {r.state for r in runs.values()} == {"finished"}
    assert {r.info["exit_code"] for r in runs.values()} == {0}
    lrs = [runs[i].config["lr"] for i in out["ids"]]
    assert lrs == [0.3, 0.1, 0.03]
    assert {r.config["epochs"] for r in runs.values()} == {20}
    assert all(r.last_step == 19 for r in runs.values())
    assert {r.group for r in runs.values()} == {"lr-sweep"}

    def ids(**query: Any) -> list[str]:
        return [r.id for r in api.runs("team/sweep", **query)]

    assert ids(filters={"config.lr": {"$lt": 0.2}}, order="+config.lr") == [
        out["ids"][2],
        out["ids"][1],
    ]
    assert ids(order="-summary.final_loss") == out["ids"][::-1]
    assert ids(order="summary_metrics.final_loss") == out["ids"]
    assert len(ids(filters={"config.optimizer.name": "sgd", "state": "finished"})) == 3
    assert ids(filters={"config.lr.value": {"$gte": 0.3}}) == [out["ids"][0]]
    assert len(ids(filters={"tags": "sweep"})) == 3
    assert len(ids(filters={"tags": {"$in": ["nope", "sweep"]}})) == 3
    assert ids(filters={"tags": {"$nin": ["sweep"]}}) == []
    assert sorted(
        ids(filters={"$or": [{"config.lr": 0.3}, {"config.lr": {"$eq": 0.03}}]})
    ) == sorted([out["ids"][0], out["ids"][2]])
    assert ids(filters={"summary.final_loss": {"$gt": 0.5, "$lt": 1.0}}) == [
        out["ids"][2]
    ]


def test_fork_and_rewind_script(repo: Path, tmp_path: Path) -> None:
    out, _ = run_script("fork_rewind.py", repo, tmp_path)
    api = gitruns.Api(repo=repo)
    base, fork = api.run(out["base"]), api.run(out["fork"])

    assert base.last_step == 99 and base.config == {"lr": 0.1}
    assert fork.config == {"lr": 0.5}
    assert fork.fork_from is not None and fork.fork_from["step"] == 49
    assert fork.last_step == 79
    assert [r["step"] for r in fork.info["rewinds"]] == [69]

    base_rows = {r["_step"]: r["loss"] for r in base.scan_history()}
    fork_rows = {r["_step"]: r["loss"] for r in fork.scan_history()}
    assert [fork_rows[s] for s in range(50)] == [base_rows[s] for s in range(50)]
    assert fork_rows[50] == pytest.approx(base_rows[49] * (1 - 0.5 / 10))
    assert fork_rows[70] == pytest.approx(0.5 * (1 - 0.05 / 10))
    assert sorted(fork_rows) == list(range(80))

    by_epoch = api.run(out["by_epoch"])
    assert by_epoch.fork_from is not None and by_epoch.fork_from["step"] == 39
    assert out["by_epoch_first_step"] == 40
    assert "0..99" in out["error"]


@pytest.mark.parametrize(
    ("how", "code", "status"),
    # Python ends itself with SIGINT on an uncaught KeyboardInterrupt; the
    # run records the shell's 130 for it.
    [("exception", 1, 1), ("exit", 3, 3), ("interrupt", 130, -2)],
)
def test_a_dying_script_leaves_a_crashed_run_with_its_data(
    repo: Path, tmp_path: Path, how: str, code: int, status: int
) -> None:
    run_script("crash.py", repo, tmp_path, f"died-{how}", how, expect=status)
    run = gitruns.Api(repo=repo).run(f"died-{how}")

    assert run.state == "crashed"
    assert run.info["exit_code"] == code
    assert run.last_step == 49
    assert run.summary["seen"] == 50
    assert run.summary["loss"] == pytest.approx(1 / 50)
    assert run.config == {"how": how}


def test_disabled_script_runs_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out, _ = run_script("disabled.py", None, work, "--lr", "0.5")

    assert out == {
        "lr": 0.5,
        "epochs": 3,
        "best": 0.9,
        "disabled": True,
        "saved": [],
        "run_after_finish": True,
    }
    assert list(work.iterdir()) == []


# -- module-level state -------------------------------------------------------


def test_module_state_follows_the_current_run(repo: Path) -> None:
    from gitruns import log as imported_log

    assert gitruns.run is None
    with pytest.raises(GitRunsError, match=r"gitruns\.init\(\)"):
        gitruns.log({"x": 1})
    with pytest.raises(GitRunsError, match="init"):
        _ = gitruns.config.lr
    assert "no run is active" in repr(gitruns.summary)

    run = gitruns.init(project="state", repo=repo, config={"lr": 0.1})
    assert gitruns.run is run
    assert gitruns.config is run.config and gitruns.summary is run.summary
    assert gitruns.log == run.log
    gitruns.log({"x": 1.0})
    imported_log({"x": 2.0})  # imported before init: still reaches the run
    gitruns.define_metric("x", summary="max")
    assert gitruns.summary["x"] == {"max": 2.0}
    assert gitruns.config.lr == 0.1
    gitruns.finish()

    assert gitruns.run is None and run.finished
    assert gitruns.log is run_module.log
    view = gitruns.Api(repo=repo).run(run.path)
    assert [row["x"] for row in view.scan_history()] == [1.0, 2.0]
    gitruns.finish()  # no run: nothing to do, as in W&B


def test_unsupported_names_say_so() -> None:
    with pytest.raises(AttributeError, match="W&B compatibility"):
        _ = gitruns.Artifact
    assert not hasattr(gitruns, "log_artifact")
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        _ = gitruns.nonsense
    assert gitruns.login(key="x") is True
    gitruns.watch(object(), log="all")  # accepted, does nothing
    gitruns.setup()


def test_media_values_are_left_out_with_one_warning(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = gitruns.init(project="media", repo=repo)
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        for i in range(3):
            run.log({"img": gitruns.Image(np.zeros((2, 2))), "loss": float(i)})
        run.log({"eval": {"table": gitruns.Table(columns=["a"]), "acc": 0.5}})
        run.log({"gallery": [gitruns.Image(), gitruns.Image()], "acc": 0.6})
    with pytest.raises(InvalidValueError, match="not a number"):
        run.log({"bad": object(), "img": gitruns.Image()})
    with pytest.raises(AttributeError, match="W&B compatibility"):
        run.log_artifact("model.pt")
    run.finish()

    warned = [r.getMessage() for r in caplog.records if "does not store" in r.message]
    assert len(warned) == 3 and "'eval/table'" in warned[1]
    assert "'gallery' is a wandb.Image list" in warned[2]
    rows = list(gitruns.Api(repo=repo).run(run.path).scan_history())
    assert [sorted(r) for r in rows] == [["_step", "_timestamp", "loss"]] * 3 + [
        ["_step", "_timestamp", "eval/acc"],
        ["_step", "_timestamp", "acc"],
    ]


# -- init arguments -------------------------------------------------------------


def test_init_records_what_wandb_scripts_pass(repo: Path) -> None:
    run = gitruns.init(
        project="args",
        entity="team",
        name="first try",
        tags=("a", "b"),
        notes="why",
        group="g",
        job_type="eval",
        repo=repo,
        anonymous="allow",
        magic=True,
        force=False,
        save_code=False,
        mode="offline",
    )
    assert (run.entity, run.name, run.group, run.job_type) == (
        "team",
        "first try",
        "g",
        "eval",
    )
    assert run.tags == ("a", "b") and run.offline and not run.disabled
    run.tags = (*run.tags, "c")
    run.notes = "why not"
    run.finish()

    view = gitruns.Api(repo=repo).run(run.path)
    assert view.tags == ["a", "b", "c"] and view.notes == "why not"
    assert view.info["code"] is None


def test_init_refuses_unknown_keywords_and_modes(repo: Path) -> None:
    with pytest.raises(TypeError, match="projcet"):
        gitruns.init(projcet="x", repo=repo)
    with pytest.raises(InvalidValueError, match="online, offline, disabled"):
        gitruns.init(mode="loud", repo=repo)
    with pytest.raises(InvalidValueError, match="reinit"):
        gitruns.init(reinit="sometimes", repo=repo)
    assert not repo.exists()
    with pytest.raises(InvalidValueError, match="pass id="):
        gitruns.init(resume="must", repo=repo)


def test_an_exception_in_the_with_block_marks_the_run_crashed(repo: Path) -> None:
    with (
        pytest.raises(ZeroDivisionError),
        gitruns.init(project="ctx", repo=repo) as run,
    ):
        run.log({"x": 1})
        _ = 1 / 0
    assert run.finished and gitruns.run is None
    view = gitruns.Api(repo=repo).run(run.path)
    assert (view.state, view.info["exit_code"], view.last_step) == ("crashed", 1, 0)


def test_ignored_integrations_warn_once(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        run = gitruns.init(project="tb", repo=repo, sync_tensorboard=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("init(sync_tensorboard=True) is ignored")
    run.finish()


def test_settings_unknown_keys_are_reported_once_at_debug(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gitruns.Settings(x_unheard_of_setting=1, window=10, console="off")
    settings.flush_interval = 5.0
    assert settings.mode is None and settings.window == 10
    with pytest.raises(AttributeError):
        _ = settings.nothing_like_this
    with caplog.at_level(logging.DEBUG, logger="gitruns"):
        first = gitruns.init(project="s", repo=repo, settings=settings)
        second = gitruns.init(project="s", repo=repo, settings=settings, window=20)
    reports = [r for r in caplog.records if "x_unheard_of_setting" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelno == logging.DEBUG
    first.finish()
    second.finish()

    api = gitruns.Api(repo=repo)
    assert api.run(first.path).info["window"] == 10
    assert api.run(second.path).info["window"] == 20  # a keyword beats settings


def test_config_from_argparse_with_include_and_exclude_keys(repo: Path) -> None:
    args = argparse.Namespace(lr=0.1, layers=[64, 32], api_key="x", seed=1)
    with pytest.raises(InvalidValueError, match="not both"):
        gitruns.init(
            repo=repo, config=args, config_include_keys=["lr"], config_exclude_keys=[]
        )
    run = gitruns.init(repo=repo, config=args, config_exclude_keys=["api_key"])
    only = gitruns.init(repo=repo, config=args, config_include_keys=["lr", "seed"])
    assert dict(run.config) == {"lr": 0.1, "layers": [64, 32], "seed": 1}
    assert dict(only.config) == {"lr": 0.1, "seed": 1}


def test_config_access_update_and_allow_val_change(repo: Path) -> None:
    run = gitruns.init(
        project="cfg",
        repo=repo,
        config={"lr": 0.1, "model": {"depth": 4, "act": "relu"}, "nan": math.nan},
    )
    config = run.config
    assert config.lr == config["lr"] == 0.1
    assert config.model["depth"] == 4
    config.batch = 32
    config["epochs"] = np.int64(3)
    config.update(argparse.Namespace(warmup=np.float32(0.5), lr=0.1, nan=math.nan))
    config.setdefaults({"lr": 9.0, "dropout": 0.2})

    with pytest.raises(InvalidValueError, match="allow_val_change") as caught:
        config.update({"lr": 0.2})
    assert caught.value.key == "config.lr"
    with pytest.raises(InvalidValueError):
        config.lr = 0.3
    config.update({"lr": 0.2}, allow_val_change=True)
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = config.missing
    del config.dropout
    run.finish()

    stored = gitruns.Api(repo=repo).run(run.path).config
    assert stored["lr"] == 0.2 and stored["batch"] == 32
    assert stored["epochs"] == 3 and type(stored["epochs"]) is int
    assert stored["warmup"] == 0.5 and "dropout" not in stored
    assert stored["model"] == {"depth": 4, "act": "relu"}
    assert math.isnan(stored["nan"])

    loose = gitruns.init(project="cfg", repo=repo, allow_val_change=True)
    loose.config.lr = 1
    loose.config.lr = 2
    assert loose.config.lr == 2


def test_summary_user_values_win_and_can_be_taken_back(repo: Path) -> None:
    run = gitruns.init(project="sum", repo=repo)
    for acc in (0.5, 0.9, 0.7):
        run.log({"acc": acc, "val/a": acc, "val/b": -acc})
    run.define_metric("val/*", summary="max")
    assert run.summary.acc == 0.7
    run.summary["acc"] = 0.95
    run.summary.update({"note": "best so far", "np": np.float64(1.5)})
    run.log({"acc": 0.1})
    assert run.summary["acc"] == 0.95
    assert run.summary["val/b"] == {"max": -0.5}
    run.finish()

    view = gitruns.Api(repo=repo).run(run.path)
    assert view.summary["acc"] == 0.95 and view.summary["np"] == 1.5
    assert view.summary["val/a"] == {"max": 0.9}
    assert set(view.info["summary_set"]) == {"acc", "note", "np"}

    again = gitruns.init(project="sum", id=run.id, resume="allow", repo=repo)
    assert again.resumed and again.summary["acc"] == 0.95
    del again.summary["acc"]
    assert again.summary["acc"] == 0.1
    again.finish()


def test_define_metric_checks_its_arguments(repo: Path) -> None:
    run = gitruns.init(project="dm", repo=repo)
    with pytest.raises(InvalidValueError, match="use some of"):
        run.define_metric("loss", summary="median")
    with pytest.raises(InvalidValueError, match="goal"):
        run.define_metric("loss", summary="best")
    assert run.define_metric("loss", summary="best", goal="minimize") == {
        "summary": "min",
        "goal": "minimize",
    }
    # As in W&B, a second call keeps what it leaves out...
    run.define_metric("loss", hidden=True)
    assert run.define_metric("acc", step_metric="epoch", step_sync=True) == {
        "step_metric": "epoch"
    }
    assert run.define_metric("val/*", summary="max") == {"summary": "max"}
    assert run.define_metric("val/*", step_metric="epoch") == {
        "summary": "max",
        "step_metric": "epoch",
    }
    # ...unless it overwrites.
    assert run.define_metric("acc", summary="min", overwrite=True) == {"summary": "min"}
    run.finish()
    metrics = gitruns.Api(repo=repo).run(run.path).info["metrics"]
    assert metrics["loss"] == {"summary": "min", "goal": "minimize", "hidden": True}
    assert metrics["acc"] == {"summary": "min"}


def test_reinit_modes(repo: Path) -> None:
    first = gitruns.init(project="re", repo=repo)
    assert gitruns.init(project="re", repo=repo, reinit=False) is first
    assert gitruns.init(project="re", repo=repo, reinit="return_previous") is first

    side = gitruns.init(project="re", repo=repo, reinit="create_new")
    assert gitruns.run is first and not side.finished

    beside = gitruns.init(project="re", repo=repo)
    assert gitruns.run is beside and not first.finished

    last = gitruns.init(project="re", repo=repo, reinit=True)
    assert first.finished and side.finished and beside.finished
    assert gitruns.run is last
    assert run_module.active_runs() == [last]


def test_disabled_mode_in_process(tmp_path: Path) -> None:
    run = gitruns.init(
        config={"lr": 0.1},
        settings={"mode": "disabled"},
        project="off",
    )
    assert run.disabled and gitruns.run is run and isinstance(run, gitruns.Run)
    gitruns.log({"anything": [1, 2, 3]}, step=-5)
    run.define_metric("x", summary="max")
    gitruns.summary["best"] = 1
    assert gitruns.config.lr == 0.1 and run.summary["best"] == 1
    assert run.save("*") == [] and run.step == 0
    assert Path(run.dir).is_dir()
    gitruns.finish()
    assert gitruns.run is None
    assert not (tmp_path / ".gitruns").exists()


def test_env_mode_and_dir_choose_where_runs_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITRUNS_MODE", "disabled")
    assert gitruns.init().disabled
    gitruns.finish()
    monkeypatch.delenv("GITRUNS_MODE")

    elsewhere = tmp_path / "scratch"
    run = gitruns.init(project="d", dir=elsewhere, mode="dryrun")
    assert run.offline
    run.log({"x": 1})
    run.finish()
    assert (elsewhere / ".gitruns").is_dir() and not (tmp_path / ".gitruns").exists()
    assert gitruns.Api(repo=elsewhere / ".gitruns").run(run.id).last_step == 0


# -- save ---------------------------------------------------------------------


def test_save_keeps_files_by_policy_and_refuses_large_ones(
    repo: Path, tmp_path: Path
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("lr: 0.1\n")
    (tmp_path / "conf" / "data.yaml").write_text("rows: 10\n")
    (tmp_path / "live.txt").write_text("first")
    (tmp_path / "now.txt").write_text("first")
    big = tmp_path / "model.bin"
    big.write_bytes(b"\0" * (MAX_SAVE_BYTES + 1))

    run = gitruns.init(project="files", repo=repo)
    assert run.save("conf/*.yaml") == ["files/conf/data.yaml", "files/conf/train.yaml"]
    assert run.save(str(tmp_path / "conf" / "*.yaml"), base_path=tmp_path / "conf") == [
        "files/data.yaml",
        "files/train.yaml",
    ]
    run.save("live.txt")
    run.save("now.txt", policy="now")
    assert run.save("later-*.txt") == []
    with pytest.raises(InvalidValueError, match="Git LFS") as caught:
        run.save("model.bin")
    assert str(MAX_SAVE_BYTES) in str(caught.value)
    with pytest.raises(InvalidValueError, match="outside base_path"):
        run.save("live.txt", base_path=tmp_path / "conf")
    with pytest.raises(InvalidValueError, match="policy"):
        run.save("live.txt", policy="sometimes")

    (tmp_path / "live.txt").write_text("second")
    (tmp_path / "now.txt").write_text("second")
    (tmp_path / "later-1.txt").write_text("made after save()")
    run.finish()

    branch = f"runs/{run.path}"
    assert git(repo, "show", f"{branch}:files/live.txt") == "second"
    assert git(repo, "show", f"{branch}:files/now.txt") == "first"
    assert git(repo, "show", f"{branch}:files/later-1.txt") == "made after save()"
    assert git(repo, "show", f"{branch}:files/conf/train.yaml") == "lr: 0.1\n"
    assert "model.bin" not in git(repo, "ls-tree", "-r", "--name-only", branch)

    # A resumed run keeps the files it had and adds to them.
    again = gitruns.init(project="files", id=run.id, resume="must", repo=repo)
    (tmp_path / "extra.md").write_text("more")
    again.save("extra.md", policy="now")
    again.finish()
    names = git(repo, "ls-tree", "-r", "--name-only", branch).split()
    assert {"files/extra.md", "files/live.txt", "files/conf/data.yaml"} <= set(names)


# -- Api ----------------------------------------------------------------------


def _small_run(repo: Path, project: str = "api", **init: Any) -> str:
    run = gitruns.init(project=project, repo=repo, **init)
    for step in range(20):
        run.log({"loss": 1.0 / (step + 1), "acc": step / 20})
        if step % 5 == 4:
            run.log({"val/acc": step / 25, "epoch": step // 5})
    run.finish()
    return run.path


def test_api_history_samples_keys_and_scan(repo: Path) -> None:
    path = _small_run(repo)
    view = gitruns.Api(repo=repo).run(f"entity/{path.replace('/', '/runs/')}")

    full = view.history()
    assert len(full) == 24 and full["_step"].tolist() == list(range(24))
    sampled = view.history(5, pandas=False)
    assert len(sampled) == 5
    assert sampled[0]["_step"] == 0 and sampled[-1]["_step"] == 23
    val = view.history(keys=["val/acc"], x_axis="epoch", pandas=False)
    assert [(r["epoch"], r["val/acc"]) for r in val] == [
        (i, (5 * i + 4) / 25) for i in range(4)
    ]
    rows = list(view.scan_history(keys=["loss"], min_step=3, max_step=7))
    assert [r["_step"] for r in rows] == [3, 4, 6]
    assert view.history(stream="system", pandas=False) == []
    assert view.url.endswith(f"#runs/{path}")


def test_api_update_commits_edits_under_the_lock(repo: Path) -> None:
    path = _small_run(repo, tags=["old"], config={"lr": 0.1})
    api = gitruns.Api(repo=repo)
    view = api.run(path)
    before = view.tip

    view.update()  # nothing edited: nothing committed
    assert api.run(path).tip == before

    view.summary["best"] = 0.99
    view.tags.append("reviewed")
    view.config["note"] = "rerun"
    view.name = "renamed"
    view.update()

    fresh = api.run(path)
    assert fresh.tip != before
    assert git(repo, "rev-parse", f"runs/{path}~1").strip() == before
    assert git(repo, "log", "-1", "--format=%s", f"runs/{path}").startswith(
        f"{path}: edit config, name, summary, tags"
    )
    assert fresh.summary["best"] == 0.99 and fresh.tags == ["old", "reviewed"]
    assert fresh.config == {"lr": 0.1, "note": "rerun"} and fresh.name == "renamed"
    assert fresh.last_step == 23 and fresh.state == "finished"
    assert "best" in fresh.info["summary_set"]

    # The edit survives a resume, and summary.update() commits at once.
    again = gitruns.init(project="api", id=fresh.id, resume="allow", repo=repo)
    again.log({"loss": 0.0})
    with pytest.raises(RunLockedError):
        api.run(path).summary.update({"late": 1})
    again.finish()
    assert api.run(path).summary["best"] == 0.99
    api.run(path).summary.update({"late": 1})
    assert api.run(path).summary["late"] == 1


def test_api_filter_and_order_errors_and_edges(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _small_run(repo, project="f", config={"lr": 0.1, "name": "a"})
    b = _small_run(repo, project="f", config={"lr": "high"})
    c = _small_run(repo, project="f", config={})
    api = gitruns.Api(repo=repo)

    def paths(**query: Any) -> list[str]:
        return [r.path for r in api.runs("f", **query)]

    assert paths(filters={"config.lr": {"$gt": 0}}) == [a]  # str never compares
    assert paths(filters={"config.lr": {"$exists": False}}) == [c]
    assert sorted(paths(filters={"config.lr": {"$ne": 0.1}})) == sorted([b, c])
    assert paths(filters={"config.lr": {"$regex": "^hi"}}) == [b]
    assert paths(order="-config.lr")[-1] == c  # missing values come last
    assert paths(order="+config.lr")[:2] == [a, b]  # numbers before text
    assert paths(filters={"display_name": Path(a).name}) == [a]
    with pytest.raises(InvalidValueError, match=r"\$gt"):
        paths(filters={"config.lr": {"$bigger": 1}})
    with pytest.raises(
        InvalidValueError, match="invalid filters='colour'.*config.<key>"
    ):
        paths(filters={"colour": "red"})
    with pytest.raises(InvalidValueError, match="invalid order='bogus'"):
        api.runs("f", order="+bogus")
    assert isinstance(api.runs()[0], ApiRun)
    # W&B's Api(overrides) form, with the repository from the environment.
    monkeypatch.setenv("GITRUNS_REPO", str(repo))
    assert gitruns.Api({"project": "f"}).run(Path(a).name).path == a


def test_real_hf_trainer_config_round_trips(repo: Path) -> None:
    yaml = pytest.importorskip("yaml")
    alpaca = REAL_RUNS / "wandb-hf-trainer-alpaca/wandb"
    raw = yaml.safe_load(
        (alpaca / "run-20231106_034002-m84hjf9m/files/config.yaml").read_text()
    )
    # W&B's config.yaml wraps each value as {"desc", "value"}; HF's callback
    # passes the plain values to config.update(allow_val_change=True).
    values = {
        k: v["value"]
        for k, v in raw.items()
        if isinstance(v, dict) and "value" in v and not k.startswith("_")
    }
    summary = json.loads(
        (alpaca / "run-20231106_034002-m84hjf9m/files/wandb-summary.json").read_text()
    )

    run = gitruns.init(project="alpaca", repo=repo, job_type="sft")
    run.config.update(values, allow_val_change=True)
    run.config.update(values, allow_val_change=True)
    for key, value in summary.items():
        if not key.startswith("_") and isinstance(value, (int, float)):
            run.log({key: value}, step=int(summary["_step"]), commit=False)
    run.finish()

    stored = gitruns.Api(repo=repo).run(run.path)
    assert stored.config == json.loads(json.dumps(values))
    assert len(stored.config) > 150
    lr = values["learning_rate"]
    found = gitruns.Api(repo=repo).runs(
        "alpaca",
        filters={
            "config.learning_rate": {"$lte": lr},
            "summary_metrics.train/loss": summary["train/loss"],
            "job_type": "sft",
        },
    )
    assert [r.id for r in found] == [run.id]
    assert stored.last_step == summary["_step"]


@pytest.mark.parametrize("depth", [98, 99])
def test_a_config_nested_deeper_than_readers_take_is_refused(
    repo: Path, depth: int
) -> None:
    from gitruns.errors import InvalidArgumentError

    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    inner["lr"] = 0.1
    if depth == 99:  # config.json would nest 101 deep
        with pytest.raises(InvalidArgumentError, match="more than 100 deep"):
            gitruns.init(project="deep", repo=repo, config={"model": deep})
        looped: dict[str, Any] = {}
        looped["self"] = looped
        with pytest.raises(InvalidArgumentError, match="holds itself"):
            gitruns.init(project="deep", repo=repo, config=looped)
        assert not repo.exists() or gitruns.Api(repo).runs() == []
        return
    run = gitruns.init(project="deep", repo=repo, config={"model": deep})
    run.finish()
    assert gitruns.Api(repo).run(run.path).config == {"model": deep}
