"""The core CLI through click's CliRunner: output and exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import gitruns
from gitruns.cli import main


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def runs(repo: Path) -> Path:
    with gitruns.init(project="p", id="base", config={"lr": 0.1}, repo=repo) as run:
        for i in range(50):
            run.log({"loss": 1 / (i + 1), "acc": i / 50})
    fork = gitruns.init(
        project="p", id="fk", fork_from="p/base?_step=20", config={"lr": 0.5}, repo=repo
    )
    for _ in range(21, 40):
        fork.log({"loss": 0.01, "acc": 0.99})
    fork.finish()
    return repo


def _all_commands(
    group: click.Group, prefix: str = ""
) -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _all_commands(command, prefix + name + " ")
    return found


@pytest.mark.parametrize("name", [n for n, _ in _all_commands(main)])
def test_every_command_has_help(name: str) -> None:
    command = dict(_all_commands(main))[name]
    assert command.help and len(command.help.strip()) > 10, name
    code, out = invoke(*name.split(), "--help")
    assert code == 0 and "Usage:" in out


def _listed(help_text: str) -> dict[str, str]:
    """The Commands: section of a group's --help: name -> its short help."""
    section = help_text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split(None, 1) for line in section.splitlines()]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


@pytest.mark.parametrize(
    "name",
    ["", *(n for n, c in _all_commands(main) if isinstance(c, click.Group))],
    ids=lambda name: f"gitruns {name}".strip(),
)
def test_every_group_lists_its_commands(name: str) -> None:
    group = dict(_all_commands(main)).get(name, main)
    assert isinstance(group, click.Group)
    assert group.help and len(group.help.strip()) > 10, name
    code, out = invoke(*name.split(), "--help")
    assert code == 0 and "Usage:" in out

    listed = _listed(out)
    assert sorted(listed) == sorted(
        n for n, c in group.commands.items() if not c.hidden
    )
    assert all(listed.values()), listed  # each one with its short help


def test_runs_listing(runs: Path) -> None:
    code, out = invoke("runs", "--repo", str(runs))
    assert code == 0
    assert "p/base" in out and "p/fk" in out and "p/base@20" in out
    code, out = invoke("runs", "--repo", str(runs), "--json")
    listed = {r["run"]: r for r in json.loads(out)}
    assert listed["p/fk"]["fork_from"]["step"] == 20
    assert listed["p/base"]["last_step"] == 49


def test_show(runs: Path) -> None:
    code, out = invoke("show", "fk", "--repo", str(runs))
    assert code == 0
    assert "forked     from p/base at step 20" in out
    assert "lr" in out and "0.5" in out
    code, out = invoke("show", "p/fk", "--repo", str(runs), "--json")
    assert json.loads(out)["config"] == {"lr": 0.5}


def test_history_formats(runs: Path) -> None:
    code, out = invoke(
        "history", "p/base", "--repo", str(runs), "-f", "csv", "--keys", "loss"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 50 and float(rows[3]["loss"]) == 1 / 4
    code, out = invoke(
        "history", "p/base", "--repo", str(runs), "-f", "json", "--min-step", "48"
    )
    assert [json.loads(line)["_step"] for line in out.splitlines()] == [48, 49]
    code, out = invoke("history", "p/base", "--repo", str(runs), "--max-step", "3")
    assert out.splitlines()[0].split() == ["_step", "acc", "loss"]
    assert len(out.splitlines()) == 4


def test_lineage_and_diff(runs: Path) -> None:
    code, out = invoke("lineage", "p/base", "--repo", str(runs))
    assert "p/fk  forked from p/base at step 20" in out
    code, out = invoke("diff", "p/base", "p/fk", "--repo", str(runs))
    assert code == 0
    assert "shared up to step 20" in out and "lr: 0.1 -> 0.5" in out
    code, out = invoke("diff", "p/base", "p/fk", "--repo", str(runs), "--json")
    data = json.loads(out)
    assert data["last_shared_step"] == 20 and data["config"] == {"lr": [0.1, 0.5]}


def test_diff_of_a_run_and_itself_or_its_prefix_says_so(runs: Path) -> None:
    code, out = invoke("diff", "p/base", "p/base", "--repo", str(runs))
    assert code == 0 and "history: the same through step 49 (of p/base)" in out
    code, out = invoke(
        "fork", "p/base", "--step", "30", "--id", "part", "--repo", str(runs)
    )
    assert code == 0, out
    code, out = invoke("diff", "p/part", "p/base", "--repo", str(runs))
    assert "all of p/part (through step 30, of p/base) is in p/base" in out
    assert "goes on to step 49" in out and "diverges" not in out


def test_diff_of_a_fork_at_a_step_without_data_says_it_is_all_shared(
    repo: Path,
) -> None:
    with gitruns.init(project="p", id="sparse", repo=repo) as run:
        for step in range(0, 50, 10):
            run.log({"loss": 1 / (step + 1)}, step=step)
    code, out = invoke(
        "fork", "p/sparse", "--step", "25", "--id", "at25", "--repo", str(repo)
    )
    assert code == 0, out
    code, out = invoke("diff", "p/at25", "p/sparse", "--repo", str(repo))
    assert "all of p/at25 (through step 20, of p/sparse) is in p/sparse" in out
    assert "diverges" not in out
    with gitruns.init(project="p", id="empty", repo=repo):
        pass
    code, out = invoke("diff", "p/empty", "p/empty", "--repo", str(repo))
    assert "history: neither run has logged a step" in out
    with gitruns.init(project="p", id="late", repo=repo) as run:
        run.log({"loss": 1.0}, step=5)
    code, out = invoke(
        "fork", "p/late", "--step", "2", "--id", "early", "--repo", str(repo)
    )
    assert code == 0, out
    code, out = invoke("diff", "p/late", "p/early", "--repo", str(repo))
    assert "history: p/early has logged no step" in out


def test_fork_and_rewind_commands(runs: Path) -> None:
    code, out = invoke(
        "fork", "p/base", "--step", "10", "--id", "cli", "--repo", str(runs)
    )
    assert code == 0 and "into p/cli" in out
    assert gitruns.Api(runs).run("p/cli").last_step == 10
    code, out = invoke("rewind", "p/base", "--step", "5", "--repo", str(runs))
    assert code == 0 and "rewound p/base to step 5" in out
    assert gitruns.Api(runs).run("p/base").last_step == 5


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["show", "ghost"], 3, "no run 'ghost'"),
        (["fork", "p/base", "--step", "999"], 2, "committed steps up to 49"),
        (["rewind", "p/base", "--step", "-3"], 2, "must not be negative"),
        (["rewind", "p/base", "--step", "\u0663"], 2, "must be an integer"),
        (["fork", "p/base", "--step", "9" * 5000], 2, "must be an integer"),
        (["fork", "p/base", "--step", "=5"], 2, "write it as '<run>?_step=N'"),
        (["fork", "p/base", "--step", "3", "--set", "lr"], 2, "write it as KEY=VALUE"),
        (["fork", "p/base", "--step", "epoch="], 2, "write it as '<run>?_step=N'"),
        (["show", "bad..name"], 2, "invalid run id"),
        (["fork", "p/base", "--step", "3", "--id", "fk"], 4, "pass another --id"),
        (["push", "/nonexistent/remote.git", "p/base"], 7, "nonexistent"),
        (["push", "/no/such/runs.git"], 7, "no Git repository at /no/such/runs.git"),
        (["import", "hf-trainer", "/nonexistent/trainer_state.json"], 8, "no such"),
    ],
)
def test_errors_have_exit_codes(
    runs: Path, args: list[str], exit_code: int, message: str
) -> None:
    result = CliRunner().invoke(main, [*args, "--repo", str(runs)])
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("Error: ") and message in result.output


def test_a_log_of_another_format_says_to_name_its_format(
    repo: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "trainer_state.json"
    wrong.write_text('{"log_history": [{"step": 1, "loss": 0.5}]}\n{"x": 1}\n')
    code, out = invoke("import", "keras", str(wrong), "--repo", str(repo))
    assert code == 8
    assert out.startswith("Error: ") and "if it is not a keras log, name its" in out


def test_demo_runs_and_shows_the_fork(repo: Path) -> None:
    code, out = invoke("demo", "--steps", "60", "--fork-at", "30", "--repo", str(repo))
    assert code == 0
    assert "forked digits/" in out and "diverges at step 31" in out
    assert "lr: 0.05 -> 0.5" in out and "git --git-dir" in out
    views = gitruns.Api(repo).runs("digits")
    assert len(views) == 2
    fork = next(v for v in views if v.fork_from)
    assert fork.last_step == 59 and fork.fork_from["step"] == 30
    accuracy = [r["eval/accuracy"] for r in fork.scan_history(keys=["eval/accuracy"])]
    assert accuracy and all(0.0 <= a <= 1.0 for a in accuracy)
    base = next(v for v in views if not v.fork_from)
    epochs = {r["_step"]: r["epoch"] for r in base.scan_history(keys=["epoch"])}
    assert epochs[0] == 0 and max(epochs.values()) >= 1  # whole epochs completed
    code, out = invoke("fork", base.path, "--step", "epoch=0", "--repo", str(repo))
    assert code == 0, out
    assert "at epoch=0 into" in out
    forked = next(
        v
        for v in gitruns.Api(repo).runs("digits")
        if v.last_step is not None and v.path not in {base.path, fork.path}
    )
    assert forked.fork_from["step"] == max(s for s, e in epochs.items() if e == 0)


def test_diff_tells_a_missing_key_from_none(repo: Path) -> None:
    gitruns.init(project="p", id="a", config={"x": None, "y": 1}, repo=repo).finish()
    gitruns.init(project="p", id="b", config={"y": 2}, repo=repo).finish()
    code, out = invoke("diff", "p/a", "p/b", "--repo", str(repo))
    assert "x: None -> (missing)" in out and "y: 1 -> 2" in out
    assert "history: no shared history" in out


def test_show_names_the_first_step(repo: Path) -> None:
    with gitruns.init(project="p", id="late", repo=repo) as run:
        run.log({"m": 1}, step=25)
        run.log({"m": 2}, step=50)
    code, out = invoke("show", "p/late", "--repo", str(repo))
    assert "steps      25..50" in out


def test_reading_a_missing_repository_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = CliRunner().invoke(main, ["runs", "--repo", str(missing)])
    assert result.exit_code == 6
    assert "is not a Git repository" in result.output
    assert not missing.exists()
    with pytest.raises(gitruns.GitRunsError):
        gitruns.Api(missing)
    assert not missing.exists()


def test_recover_skips_a_run_a_live_writer_holds(repo: Path) -> None:
    live = gitruns.init(project="p", id="live", repo=repo)
    live.log({"m": 1})
    result = CliRunner().invoke(main, ["recover", "p/live", "--repo", str(repo)])
    assert result.exit_code == 4
    assert "skipped p/live" in result.output and "being written" in result.output
    live.finish()
    assert gitruns.Api(repo).run("p/live").state == "finished"


def test_recover_of_a_finished_run_writes_nothing(repo: Path) -> None:
    from gitruns.store import RunStore

    done = gitruns.init(project="p", id="done", repo=repo)
    done.log({"m": 1})
    done.finish()
    store = RunStore.open(repo)
    tip = store.tip(done.ref)
    result = CliRunner().invoke(main, ["recover", "p/done", "--repo", str(repo)])
    assert result.exit_code == 0
    assert "nothing to recover in p/done (finished)" in result.output
    assert RunStore.open(repo).tip(done.ref) == tip


def test_recover_goes_on_past_a_run_it_cannot_commit(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gitruns.chunk
    import gitruns.writer

    # A journal holding a row wider than a chunk (only a journal made by hand
    # or by another tool can), beside a crashed run that recovers.
    monkeypatch.setattr(gitruns.writer, "MAX_METRICS", 100)
    wide = gitruns.init(project="p", id="wide", repo=repo, background=False)
    wide.log({f"k{j}": 1.0 for j in range(20)})
    wide._writer.abandon()
    plain = gitruns.init(project="p", id="plain", repo=repo, background=False)
    plain.log({"x": 1.0})
    plain._writer.abandon()
    monkeypatch.setattr(gitruns.chunk, "MAX_METRICS", 10)
    result = CliRunner().invoke(main, ["recover", "--repo", str(repo)])
    assert result.exit_code == 2  # InvalidValueError's: rows no chunk holds
    assert (
        "Error: p/wide: " in result.output
        and "20 metrics in one chunk" in result.output
    )
    assert "recovered p/plain: 1 journaled step(s)" in result.output
    assert "1 run(s) could not be recovered (p/wide)" in result.output
    assert gitruns.Api(repo).run("p/plain").state == "crashed"


def test_rewind_leaves_no_journal_behind(runs: Path) -> None:
    assert invoke("rewind", "p/base", "--step", "10", "--repo", str(runs))[0] == 0
    code, out = invoke("show", "p/base", "--repo", str(runs))
    assert code == 0 and "steps      0..10" in out
    assert "not committed yet" not in out
    assert list((runs / "gitruns" / "journal").rglob("*.jnl")) == []


def test_recover_reports_a_finish_that_fails_and_goes_on(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitruns.errors import RepositoryError
    from gitruns.writer import RunWriter

    for run_id in ("a", "b"):
        run = gitruns.init(project="p", id=run_id, repo=repo, background=False)
        run.log({"x": 1.0})
        run._writer.abandon()
    finish = RunWriter.finish

    def full_disk(self: RunWriter, state: str, **meta: object) -> object:
        if self.run.run_id == "a":
            raise RepositoryError("no space left on device; free some space")
        return finish(self, state, **meta)

    monkeypatch.setattr(RunWriter, "finish", full_disk)
    result = CliRunner().invoke(main, ["recover", "--repo", str(repo)])
    assert result.exit_code == RepositoryError.exit_code
    assert "Error: p/a: no space left on device" in result.output
    assert "recovered p/b: 1 journaled step(s)" in result.output
    assert "1 run(s) could not be recovered (p/a)" in result.output


def test_runs_points_a_plain_clone_at_pull(runs: Path, tmp_path: Path) -> None:
    from tests.conftest import git

    clone = tmp_path / "clone"
    git("clone", "-q", str(runs), str(clone))
    result = CliRunner().invoke(main, ["runs", "--repo", str(clone)])
    assert result.exit_code == 0
    assert "2 run(s) are on remote 'origin'" in result.output
    assert "gitruns pull origin" in result.output


def test_history_keys_never_logged_together_or_at_all(runs: Path) -> None:
    with gitruns.init(project="p", id="apart", repo=runs) as run:
        run.log({"a": 1})
        run.log({"b": 2})
    result = CliRunner().invoke(
        main, ["history", "p/apart", "-k", "a,b", "--repo", str(runs)]
    )
    assert result.exit_code == 0
    assert "no step of p/apart has all of: a, b" in result.output
    result = CliRunner().invoke(
        main, ["history", "p/apart", "-k", "nosuch", "--repo", str(runs)]
    )
    assert result.exit_code == 3
    assert "logged no metric 'nosuch' (it has: a, b)" in result.output


def test_reading_where_there_are_no_runs_says_so(tmp_path: Path) -> None:
    # The working directory is an empty folder outside any repository.
    result = CliRunner().invoke(main, ["runs"])
    assert result.exit_code == 6
    assert "no runs here yet: no Git repository encloses" in result.output
    assert not (tmp_path / ".gitruns").exists()


def test_show_and_history_say_when_logged_steps_are_not_committed(repo: Path) -> None:
    run = gitruns.init(project="p", id="live", repo=repo, flush_interval=3600)
    for i in range(5):
        run.log({"x": i})
    note = "p/live has logged steps that are not committed yet"
    for command in ("show", "history"):
        result = CliRunner().invoke(main, [command, "p/live", "--repo", str(repo)])
        assert result.exit_code == 0 and note in result.stderr, result.output
        assert "gitruns recover p/live" in result.stderr
    run.finish()
    result = CliRunner().invoke(main, ["history", "p/live", "--repo", str(repo)])
    assert note not in result.stderr and result.stdout.count("\n") == 6
