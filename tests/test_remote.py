"""Push, fetch and pull of run branches against real Git servers on loopback."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from dulwich.repo import Repo

import gitruns
from gitruns import hooks, remote
from gitruns.cli import remote as remote_cli
from gitruns.cli.main import main
from gitruns.errors import (
    DivergedError,
    RemoteError,
    RunNotFoundError,
)
from gitruns.refs import RunRef
from tests.gitserver import (
    GitDaemon,
    GitServer,
    SshServer,
    git,
    running_http_backend,
    running_sshd,
    sshd_unusable,
)
from tests.test_hooks import craft_commit, craft_files


def log_run(
    repo: Path,
    run_id: str,
    steps: range,
    project: str = "demo",
    **init: object,
) -> str:
    """Write a run (or more of one) with the public API; return its path."""
    run = gitruns.init(project=project, id=run_id, repo=str(repo), **init)  # type: ignore[arg-type]
    for step in steps:
        run.log({"loss": 1.0 / (step + 1), "acc": step / 1000}, step=step)
    run.finish()
    return f"{project}/{run_id}"


def steps_of(repo: Path, path: str) -> list[int]:
    """The steps a run holds, read back with the public API."""
    api = gitruns.Api(repo=str(repo))
    try:
        return [row["_step"] for row in api.run(path).scan_history()]
    finally:
        api.store.close()


def tip(repo: Path, path: str) -> str:
    return git("--git-dir", repo, "rev-parse", f"refs/heads/runs/{path}").stdout.strip()


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on loopback for this module's tests; skipped where it is absent."""
    reason = sshd_unusable()
    if reason is not None:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def statuses(outcomes: list[remote.RefOutcome]) -> dict[str, str]:
    return {o.run.path: o.status for o in outcomes}


# -- the servers themselves ------------------------------------------------------


def test_git_server_accepts_stock_git_push_and_clone(
    git_server: GitServer, tmp_path: Path
) -> None:
    git_server.create("plain.git")
    work = tmp_path / "work"
    git("init", "--quiet", work)
    # Over 1 MiB, so git sends a chunked request body to http-backend.
    payload = os.urandom(3 << 20)
    (work / "data.bin").write_bytes(payload)
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "data", cwd=work)

    git(
        "push",
        "--quiet",
        git_server.url("plain.git"),
        "HEAD:refs/heads/master",
        cwd=work,
    )
    git("clone", "--quiet", git_server.url("plain.git"), tmp_path / "clone")

    assert (tmp_path / "clone" / "data.bin").read_bytes() == payload


def test_git_daemon_stops_with_every_child(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    daemon = GitDaemon(tmp_path / "srv", tmp_path / "daemon.log")
    server = daemon.start()
    assert daemon.proc is not None
    pgid = daemon.proc.pid
    server.create()
    git("ls-remote", server.url())

    daemon.stop()

    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert git("ls-remote", server.url(), check=False).returncode != 0


# -- push --------------------------------------------------------------------------


def test_push_run_and_fork_then_read_a_stock_clone(
    git_server: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_server.create()
    src = log_run(local_bare, "src", range(300))
    fork = log_run(local_bare, "fork", range(201, 260), fork_from=f"{src}?_step=200")
    messages: list[str] = []

    outcomes = remote.push(local_repo, git_server.url(), progress=messages.append)

    assert statuses(outcomes) == {src: "created", fork: "created"}
    assert "Writing objects: 100%" in "".join(messages)
    clone = tmp_path / "clone.git"
    git("clone", "--quiet", "--bare", git_server.url(), clone)
    git("--git-dir", clone, "fsck", "--strict")
    assert steps_of(clone, src) == list(range(300))
    assert steps_of(clone, fork) == list(range(201)) + list(range(201, 260))
    api = gitruns.Api(repo=str(clone))
    lineage = api.run(fork).fork_from
    api.store.close()
    assert lineage is not None and lineage["run"] == src and lineage["step"] == 200
    assert (
        git("--git-dir", clone, "cat-file", "-t", lineage["commit"]).stdout.strip()
        == "commit"
    )


def test_push_moves_only_run_branches(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_daemon.create()
    log_run(local_bare, "a1", range(5))
    work = tmp_path / "code"
    git("clone", "--quiet", local_bare, work)
    (work / "train.py").write_text("print('hi')\n")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "code", cwd=work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=work)
    git("--git-dir", local_bare, "tag", "v1", "refs/heads/main")

    remote.push(local_repo, git_daemon.url())

    refs = git("ls-remote", git_daemon.url()).stdout
    assert "refs/heads/runs/demo/a1" in refs
    assert "refs/heads/main" not in refs and "refs/tags/v1" not in refs


def test_push_reports_up_to_date_then_fast_forward(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(10))
    remote.push(local_repo, git_daemon.url())

    again = remote.push(local_repo, git_daemon.url())
    log_run(local_bare, "r1", range(10, 20), resume="must")
    more = remote.push(local_repo, git_daemon.url())

    assert statuses(again) == {run: "up to date"}
    assert statuses(more) == {run: "fast-forward"}
    assert more[0].old is not None and more[0].old != more[0].new
    assert git("ls-remote", git_daemon.url()).stdout.split()[0] == tip(local_bare, run)


def test_push_selects_named_runs_or_a_project(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    log_run(local_bare, "a1", range(3), project="alpha")
    log_run(local_bare, "b1", range(3), project="beta")
    log_run(local_bare, "b2", range(3), project="beta")

    first = remote.push(local_repo, git_daemon.url(), [RunRef("beta", "b2")])
    second = remote.push(local_repo, git_daemon.url(), project="alpha")

    assert statuses(first) == {"beta/b2": "created"}
    assert statuses(second) == {"alpha/a1": "created"}
    refs = git("ls-remote", git_daemon.url()).stdout
    assert "runs/beta/b1" not in refs
    with pytest.raises(RunNotFoundError):
        remote.push(local_repo, git_daemon.url(), [RunRef("beta", "nope")])


def test_fork_pushed_before_its_parent_keeps_lineage(
    http_backend: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    http_backend.create()
    src = log_run(local_bare, "parent", range(50))
    fork = log_run(local_bare, "child", range(31, 40), fork_from=f"{src}?_step=30")

    remote.push(local_repo, http_backend.url(), [RunRef("demo", "child")])

    clone = tmp_path / "clone.git"
    git("clone", "--quiet", "--bare", http_backend.url(), clone)
    assert git(
        "--git-dir", clone, "for-each-ref", "--format=%(refname)"
    ).stdout.split() == ["refs/heads/runs/demo/child"]
    assert steps_of(clone, fork) == list(range(40))
    api = gitruns.Api(repo=str(clone))
    lineage = api.run(fork).fork_from
    api.store.close()
    assert lineage is not None
    git(
        "--git-dir",
        clone,
        "merge-base",
        "--is-ancestor",
        lineage["commit"],
        tip(clone, fork),
    )


def test_push_updates_remote_tracking_refs(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(5))
    git("--git-dir", local_bare, "remote", "add", "origin", git_daemon.url())

    remote.push(local_repo, "origin")

    tracking = git(
        "--git-dir", local_bare, "rev-parse", f"refs/remotes/origin/runs/{run}"
    )
    assert tracking.stdout.strip() == tip(local_bare, run)


def test_push_and_pull_after_git_gc_and_more_logging(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    # git gc writes a pack bitmap; the packs gitruns writes next have none.
    git_daemon.create()
    run = log_run(local_bare, "r1", range(50))
    remote.push(local_repo, git_daemon.url())
    other = tmp_path / "other.git"
    git("init", "--quiet", "--bare", other)
    with closing(Repo(str(other))) as theirs:
        remote.pull(theirs, str(local_bare))
    git("--git-dir", local_bare, "gc", "--quiet")
    log_run(local_bare, "r1", range(50, 60), resume="must")
    assert len(list((local_bare / "objects" / "pack").glob("*.bitmap"))) == 1

    pushed = remote.push(local_repo, git_daemon.url())
    with closing(Repo(str(other))) as theirs:
        pulled = remote.pull(theirs, str(local_bare))

    assert statuses(pushed) == {run: "fast-forward"}
    assert statuses(pulled) == {run: "fast-forward"}
    assert steps_of(other, run) == list(range(60))


# -- pull, fetch and divergence ---------------------------------------------------


def test_pull_creates_then_fast_forwards_runs(
    git_server: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_server.create()
    run = log_run(local_bare, "r1", range(20))
    remote.push(local_repo, git_server.url())
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)
    git("--git-dir", second, "remote", "add", "origin", git_server.url())

    with closing(Repo(str(second))) as other:
        created = remote.pull(other, "origin")
        log_run(local_bare, "r1", range(20, 30), resume="must")
        remote.push(local_repo, git_server.url())
        forwarded = remote.pull(other, "origin")
        unchanged = remote.pull(other, "origin")

    assert statuses(created) == {run: "created"}
    assert statuses(forwarded) == {run: "fast-forward"}
    assert statuses(unchanged) == {run: "up to date"}
    assert steps_of(second, run) == list(range(30))
    tracking = git("--git-dir", second, "rev-parse", f"refs/remotes/origin/runs/{run}")
    assert tracking.stdout.strip() == tip(local_bare, run)


def test_fetch_writes_remote_tracking_refs_only(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(5))
    remote.push(local_repo, git_daemon.url())
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)
    git("--git-dir", second, "remote", "add", "team", git_daemon.url())

    with closing(Repo(str(second))) as other:
        fetched = remote.fetch(other, "team")
        again = remote.fetch(other, "team")

    assert statuses(fetched) == {run: "new"}
    assert statuses(again) == {run: "up to date"}
    refs = git(
        "--git-dir", second, "for-each-ref", "--format=%(refname)"
    ).stdout.split()
    assert refs == [f"refs/remotes/team/runs/{run}"]


def diverged(url: str, local: Path, repo: Repo, tmp_path: Path) -> tuple[str, Path]:
    """Run r1 pushed at 10 steps, then logged on in a clone (10..14, pushed) and here
    (10..11, not pushed): both sides logged after their common commit."""
    run = log_run(local, "r1", range(10))
    remote.push(repo, url)
    other = tmp_path / "other.git"
    git("clone", "--quiet", "--bare", url, other)
    log_run(other, "r1", range(10, 15), resume="must")
    with closing(Repo(str(other))) as theirs:
        remote.push(theirs, url)
    log_run(local, "r1", range(10, 12), resume="must")
    return run, other


def test_diverged_run_is_rejected_on_push_and_reported_by_pull(
    git_server: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_server.create()
    run, other = diverged(git_server.url(), local_bare, local_repo, tmp_path)
    ours_before = tip(local_bare, run)

    # Never fetched: the push fetches the remote's tip to tell it is diverged.
    unfetched = remote.push(local_repo, git_server.url(), check=False)
    with pytest.raises(DivergedError) as pulled:
        remote.pull(local_repo, git_server.url())
    with pytest.raises(DivergedError) as pushed:
        remote.push(local_repo, git_server.url())

    assert statuses(unfetched) == {run: "diverged"}
    assert unfetched[0].message == (
        "both sides logged after their common commit "
        "(1 commit only on the remote, 1 commit only here)"
    )
    assert pulled.value.ref == f"runs/{run}"
    # Pull says where the remote's commits are; push how to replace them.
    assert "the local run is unchanged and the remote's is commit " in str(pulled.value)
    assert f"`gitruns push --force {git_server.url()} {run}`" in str(pushed.value)
    assert f"`gitruns pull --force {git_server.url()} {run}`" in str(pulled.value)
    assert pushed.value.local == ours_before
    assert pushed.value.remote == tip(other, run)
    assert tip(local_bare, run) == ours_before
    assert git("ls-remote", git_server.url()).stdout.split()[0] == tip(other, run)


def test_pull_force_takes_the_remotes_run_and_says_what_it_replaced(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_daemon.create()
    run, other = diverged(git_daemon.url(), local_bare, local_repo, tmp_path)
    ours = tip(local_bare, run)
    with pytest.raises(DivergedError, match="gitruns pull --force"):
        remote.pull(local_repo, git_daemon.url())

    result = CliRunner().invoke(
        main, ["pull", "--repo", str(local_bare), git_daemon.url(), run, "--force"]
    )

    assert result.exit_code == 0, result.output
    assert f"replaced local {ours[:10]}, dropping 1 commit" in result.stdout
    assert tip(local_bare, run) == tip(other, run)
    assert steps_of(local_bare, run) == list(range(15))


def test_force_push_says_what_it_replaced(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_daemon.create()
    run, other = diverged(git_daemon.url(), local_bare, local_repo, tmp_path)
    replaced = tip(other, run)
    remote.fetch(local_repo, git_daemon.url())

    outcomes = remote.push(local_repo, git_daemon.url(), force=True)

    assert statuses(outcomes) == {run: "forced"}
    assert f"replaced {replaced[:10]}, dropping 1 commit" in outcomes[0].message
    assert git("ls-remote", git_daemon.url()).stdout.split()[0] == tip(local_bare, run)


def test_pull_keeps_a_local_run_that_is_ahead(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(10))
    remote.push(local_repo, git_daemon.url())
    log_run(local_bare, "r1", range(10, 20), resume="must")
    before = tip(local_bare, run)

    outcomes = remote.pull(local_repo, git_daemon.url())

    assert statuses(outcomes) == {run: "ahead"}
    assert "push them" in outcomes[0].message
    assert tip(local_bare, run) == before


def first_chunk(repo: Path, path: str) -> str:
    """The path of a run's first history segment in its tree."""
    names = git("--git-dir", repo, "ls-tree", "-r", "--name-only", f"runs/{path}")
    return next(n for n in names.stdout.split() if n.endswith(".msgpack"))


def test_pull_checks_what_it_fetches_and_moves_no_refused_run(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    git_daemon.create()
    good = log_run(local_bare, "good", range(20))
    extended = log_run(local_bare, "extended", range(10))
    remote.push(local_repo, git_daemon.url())
    before = tip(local_bare, good)

    # A writer that skips every rule pushes to a server without the hook.
    evil = tmp_path / "evil.git"
    git("clone", "--quiet", "--bare", git_daemon.url(), evil)
    other = log_run(evil, "other", range(20))
    replaced = first_chunk(evil, good)
    chunk = git("--git-dir", evil, "rev-parse", f"runs/{other}:{replaced}")
    swapped = craft_files(evil, good, {replaced: git_blob(evil, chunk.stdout.strip())})
    garbled = log_run(evil, "garbled", range(5))
    garbage = craft_commit(evil, garbled, [5, 6], data=b"\x82\xa3not a chunk")
    deep = log_run(evil, "deep", range(5))
    nested = craft_files(evil, deep, {"run.json": b"[" * 100_000 + b"]" * 100_000})
    log_run(evil, "extended", range(10, 20), resume="must")
    git("--git-dir", evil, "push", "--quiet", git_daemon.url(), "refs/heads/runs/*")

    outcomes = {
        o.run.path: o for o in remote.pull(local_repo, git_daemon.url(), check=False)
    }

    assert {path: o.status for path, o in outcomes.items()} == {
        good: "rejected",
        garbled: "rejected",
        deep: "rejected",
        other: "created",
        extended: "fast-forward",
    }
    assert outcomes[good].commit == swapped.encode()
    assert outcomes[good].message == (
        f"commit {swapped[:10]} fails the checks: rewrites or removes the "
        "committed segment at step 0 without recording a rewind"
    )
    assert outcomes[garbled].commit == garbage.encode()
    assert "malformed chunk history/" in outcomes[garbled].message
    assert outcomes[deep].commit == nested.encode()
    assert "run.json" in outcomes[deep].message
    # The refused runs are as they were; the others moved.
    assert tip(local_bare, good) == before and steps_of(local_bare, good) == list(
        range(20)
    )
    branches = git("--git-dir", local_bare, "branch", "--list", "runs/*").stdout
    assert "garbled" not in branches and "deep" not in branches
    assert steps_of(local_bare, extended) == list(range(20))
    assert steps_of(local_bare, other) == list(range(20))

    result = CliRunner().invoke(
        main, ["pull", "-q", "--repo", str(local_bare), git_daemon.url()]
    )
    assert result.exit_code == 7
    assert f"rejected     {good}" in result.stdout
    assert f"up to date   {other}" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 3  # one per refused run, each with its own cause
    assert errors[0].startswith(
        f"Error: pull from {git_daemon.url()} refused runs/{deep}: "
        f"commit {nested[:10]} fails the checks: "
    )
    assert all(
        error.endswith(
            "the local run is unchanged; have the run fixed where it was written, "
            "and do not use the remote's copy"
        )
        for error in errors
    )
    with pytest.raises(
        RemoteError,
        match=r"(?s)refused runs/demo/deep: .*\n.* refused runs/demo/garbled: "
        r".*\n.* refused runs/demo/good: ",
    ):
        remote.pull(local_repo, git_daemon.url())


def git_blob(repo: Path, sha: str) -> bytes:
    """The bytes of one blob."""
    proc = subprocess.run(
        ["git", "--git-dir", str(repo), "cat-file", "blob", sha],
        capture_output=True,
        check=True,
    )
    return proc.stdout


# -- what a refusing server says --------------------------------------------------

#: A server's update hook, run once per ref: it refuses one run and says why.
UPDATE_HOOK = """#!/bin/sh
if [ "$1" = refs/heads/runs/demo/r2 ]; then
  echo "policy: frozen by admin" >&2
  exit 1
fi
"""


def install_server_hook(repository: Path, kind: str, text: str) -> None:
    hook = repository / "hooks" / kind
    hook.write_text(text)
    hook.chmod(0o755)


def test_an_update_hook_refusing_one_run_lets_the_others_in(
    git_server: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    install_server_hook(git_server.create(), "update", UPDATE_HOOK)
    r1 = log_run(local_bare, "r1", range(10))
    r2 = log_run(local_bare, "r2", range(5))
    f1 = log_run(local_bare, "f1", range(6, 8), fork_from=f"{r1}?_step=5")

    outcomes = {
        o.run.path: o for o in remote.push(local_repo, git_server.url(), check=False)
    }
    log_run(local_bare, "r3", range(3))
    runner = CliRunner()
    loud = runner.invoke(main, ["push", "--repo", str(local_bare), git_server.url()])
    quiet = runner.invoke(
        main, ["push", "-q", "--repo", str(local_bare), git_server.url()]
    )

    assert {path: o.status for path, o in outcomes.items()} == {
        r1: "created",
        r2: "rejected",
        f1: "created",
    }
    assert outcomes[r2].message == "hook declined"
    assert outcomes[r2].remote_text == ("policy: frozen by admin",)
    assert str(outcomes[r2]).endswith(
        ": hook declined (remote: policy: frozen by admin)"
    )
    on_server = remote_refs(git_server.url())
    assert f"refs/heads/runs/{r2}" not in on_server
    assert on_server[f"refs/heads/runs/{f1}"] == tip(local_bare, f1)
    assert "created      demo/r3" in loud.stdout
    assert "Writing objects: 100%" in loud.stderr and quiet.stderr.count("\n") == 1
    for result in (loud, quiet):
        assert result.exit_code == 7
        assert f"rejected     {r2}" in result.stdout
        said = result.stdout + result.stderr
        assert said.count("policy: frozen by admin") == 1
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        assert errors == [
            f"Error: push to {git_server.url()} refused runs/{r2}: hook declined "
            "(remote: policy: frozen by admin); the server's hooks decide what it "
            "accepts: fix what they say, or ask the server's admin"
        ]


def test_a_foreign_pre_receive_refusal_carries_its_message_with_quiet(
    git_daemon: GitServer, local_bare: Path
) -> None:
    refusal = '#!/bin/sh\necho "quota exceeded for team X" >&2\nexit 1\n'
    install_server_hook(git_daemon.create(), "pre-receive", refusal)
    log_run(local_bare, "r1", range(3))
    log_run(local_bare, "r2", range(3))

    result = CliRunner().invoke(
        main, ["push", "-q", "--repo", str(local_bare), git_daemon.url()]
    )

    assert result.exit_code == 7
    assert result.stderr == "".join(
        f"Error: push to {git_daemon.url()} refused runs/demo/{run}: pre-receive "
        "hook declined (remote: quota exceeded for team X); the server's hooks "
        "decide what it accepts: fix what they say, or ask the server's admin\n"
        for run in ("r1", "r2")
    )


def remote_refs(url: str) -> dict[str, str]:
    lines = git("ls-remote", url).stdout.splitlines()
    return {ref: sha for sha, ref in (line.split("\t") for line in lines)}


# -- transports, remotes and credentials ----------------------------------------


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_push_to_a_local_repository(
    form: str, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    target = tmp_path / "target.git"
    git("init", "--quiet", "--bare", target)
    run = log_run(local_bare, "r1", range(5))
    url = str(target) if form == "path" else target.as_uri()

    outcomes = remote.push(local_repo, url)

    assert statuses(outcomes) == {run: "created"}
    assert steps_of(target, run) == list(range(5))


def test_push_fetch_and_pull_over_a_real_ssh_server(
    ssh_server: SshServer,
    local_bare: Path,
    local_repo: Repo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"{tmp_path.name}.git"
    ssh_server.create(name)
    url = ssh_server.url(name)
    ssh = ssh_server.ssh_command
    src = log_run(local_bare, "src", range(30))
    fork = log_run(local_bare, "fork", range(21, 25), fork_from=f"{src}?_step=20")
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)
    git("--git-dir", second, "remote", "add", "origin", url)

    pushed = remote.push(local_repo, url, ssh_command=ssh)
    with closing(Repo(str(second))) as other:
        fetched = remote.fetch(other, "origin", ssh_command=ssh)
        pulled = remote.pull(other, "origin", ssh_command=ssh)
    # The command line finds the ssh program where git does.
    log_run(local_bare, "src", range(30, 40), resume="must")
    monkeypatch.setenv("GIT_SSH_COMMAND", ssh)
    runner = CliRunner()
    cli_push = runner.invoke(main, ["push", "-q", "--repo", str(local_bare), url])
    cli_pull = runner.invoke(main, ["pull", "-q", "--repo", str(second)])

    assert statuses(pushed) == {src: "created", fork: "created"}
    assert statuses(fetched) == {src: "new", fork: "new"}
    assert statuses(pulled) == {src: "created", fork: "created"}
    assert cli_push.exit_code == 0 and f"fast-forward {src}" in cli_push.stdout
    assert cli_pull.exit_code == 0 and f"fast-forward {src}" in cli_pull.stdout
    assert steps_of(second, src) == list(range(40))
    assert steps_of(second, fork) == list(range(25))
    api = gitruns.Api(repo=str(second))
    lineage = api.run(fork).fork_from
    api.store.close()
    assert lineage is not None and lineage["run"] == src and lineage["step"] == 20


def test_a_hook_refusal_over_ssh_names_the_run_and_the_reason(
    ssh_server: SshServer, local_bare: Path, local_repo: Repo, tmp_path: Path
) -> None:
    served = ssh_server.create(f"{tmp_path.name}.git")
    with closing(Repo(str(served))) as guarded:
        hooks.install_hook(guarded, "pre-receive")
    run = log_run(local_bare, "r1", range(5))
    bad = craft_commit(local_bare, run, [2, 3])

    with pytest.raises(RemoteError) as refused:
        remote.push(
            local_repo, ssh_server.url(served.name), ssh_command=ssh_server.ssh_command
        )

    assert str(refused.value).startswith(
        f"push to {ssh_server.url(served.name)} refused runs/{run}: pre-receive hook "
        f"declined (remote: gitruns: refused refs/heads/runs/{run} {bad[:10]}: "
        "step order: "
    )


def test_remote_name_comes_from_git_config(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(5))
    git("--git-dir", local_bare, "remote", "add", "shared", git_daemon.url())

    outcomes = remote.push(local_repo, "shared")

    assert statuses(outcomes) == {run: "created"}
    with pytest.raises(
        RemoteError, match="no remote named 'elsewhere'.*git remote add"
    ):
        remote.push(local_repo, "elsewhere")


def test_credentials_in_urls_are_never_shown(
    local_bare: Path, local_repo: Repo, tmp_path: Path, git_env: dict[str, str]
) -> None:
    log_run(local_bare, "r1", range(5))
    with running_http_backend(
        tmp_path / "http", tmp_path / "http.log", auth=("alice", "s3cret-token")
    ) as server:
        server.create()
        good = server.url().replace("http://", "http://alice:s3cret-token@")
        bad = server.url().replace("http://", "http://alice:wrong-pass@")
        messages: list[str] = []

        outcomes = remote.push(local_repo, good, progress=messages.append)
        with pytest.raises(RemoteError) as refused:
            remote.push(local_repo, bad)
        git("--git-dir", local_bare, "remote", "add", "origin", good)
        runner = CliRunner()
        result = runner.invoke(main, ["push", "--repo", str(local_bare)])

    assert statuses(outcomes) == {"demo/r1": "created"}
    assert "wrong-pass" not in str(refused.value) and "credentials" in str(
        refused.value
    )
    assert "s3cret-token" not in "".join(messages)
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output and "s3cret-token" not in result.output
    assert "http://***:***@127.0.0.1" in result.output


def test_mask_credentials() -> None:
    assert remote.mask_credentials("https://user:pw@host/x") == "https://***:***@host/x"
    assert remote.mask_credentials("https://ghp_token@host/x") == "https://***@host/x"
    assert remote.mask_credentials("ssh://git:pw@host/x") == "ssh://git:***@host/x"
    assert remote.mask_credentials("ssh://git@host/x") == "ssh://git@host/x"
    assert remote.mask_credentials("/plain/path") == "/plain/path"


def test_unreachable_server_is_a_remote_error(
    local_bare: Path, local_repo: Repo, git_env: dict[str, str]
) -> None:
    log_run(local_bare, "r1", range(3))
    from tests.gitserver import free_port

    with pytest.raises(RemoteError, match="check the URL"):
        remote.push(local_repo, f"git://127.0.0.1:{free_port()}/runs.git")


# -- the command line ---------------------------------------------------------


def test_cli_push_pull_fetch(
    git_daemon: GitServer, local_bare: Path, tmp_path: Path
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(5))
    git("--git-dir", local_bare, "remote", "add", "origin", git_daemon.url())
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)
    git("--git-dir", second, "remote", "add", "origin", git_daemon.url())
    runner = CliRunner()

    pushed = runner.invoke(main, ["push", "--repo", str(local_bare)])
    quiet = runner.invoke(
        main, ["push", "-q", "--repo", str(local_bare), "origin", "r1"]
    )
    fetched = runner.invoke(main, ["fetch", "--repo", str(second)])
    pulled = runner.invoke(main, ["pull", "-q", "--repo", str(second), "origin", run])

    assert pushed.exit_code == 0, pushed.output
    assert f"created      {run}" in pushed.stdout
    assert "Writing objects" in pushed.stderr
    assert quiet.exit_code == 0 and "up to date" in quiet.stdout
    assert quiet.stderr == ""
    assert fetched.exit_code == 0 and f"new          {run}" in fetched.stdout
    assert pulled.exit_code == 0 and f"created      {run}" in pulled.stdout
    assert tip(second, run) == tip(local_bare, run)


def test_cli_push_of_a_run_behind_the_remote_exits_7_with_one_error_line(
    git_daemon: GitServer, local_bare: Path, tmp_path: Path
) -> None:
    git_daemon.create()
    run = log_run(local_bare, "r1", range(5))
    other = tmp_path / "other.git"
    with closing(Repo(str(local_bare))) as ours:
        remote.push(ours, git_daemon.url())
    git("clone", "--quiet", "--bare", git_daemon.url(), other)
    log_run(other, "r1", range(5, 8), resume="must")
    with closing(Repo(str(other))) as theirs:
        remote.push(theirs, git_daemon.url())

    # Once before the remote's commits are here, once after that push fetched them.
    runs = [
        CliRunner().invoke(
            main, ["push", "-q", "--repo", str(local_bare), git_daemon.url()]
        )
        for _ in range(2)
    ]

    for result in runs:
        assert result.exit_code == 7
        assert f"behind       {run}" in result.stdout
        assert "(" not in result.stdout  # the reason is said once, below
        errors = [
            line for line in result.stderr.splitlines() if line.startswith("Error:")
        ]
        assert errors == [
            f"Error: push to {git_daemon.url()} refused runs/{run}: the remote has "
            "1 commit this run lacks, and this run has none of its own; "
            "pull first (`gitruns pull`)"
        ]


def test_cli_run_named_without_a_remote_goes_to_origin(
    local_bare: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target.git"
    git("init", "--quiet", "--bare", target)
    log_run(local_bare, "r1", range(3))
    log_run(local_bare, "r2", range(3))
    runner = CliRunner()

    no_origin = runner.invoke(main, ["push", "--repo", str(local_bare), "demo/r1"])
    git("--git-dir", local_bare, "remote", "add", "origin", str(target))
    by_path = runner.invoke(main, ["push", "-q", "--repo", str(local_bare), "demo/r1"])
    by_id = runner.invoke(main, ["push", "-q", "--repo", str(local_bare), "r2", "r1"])
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)
    git("--git-dir", second, "remote", "add", "origin", str(target))
    pulled = runner.invoke(main, ["pull", "-q", "--repo", str(second), "demo/r2"])

    assert no_origin.exit_code == 7
    assert no_origin.stderr == (
        "Error: 'demo/r1' is a run, not a remote, and this repository has no "
        "remote 'origin' to push it; name the remote first (`gitruns push REMOTE "
        f"demo/r1`) or add origin with `git --git-dir {local_bare} remote add origin "
        "<url>`\n"
    )
    assert by_path.exit_code == 0, by_path.output
    assert by_path.stdout.splitlines()[1].split()[:2] == ["created", "demo/r1"]
    assert len(by_path.stdout.splitlines()) == 2
    assert by_id.exit_code == 0, by_id.output
    assert statuses_of(by_id.stdout) == {"demo/r1": "up to date", "demo/r2": "created"}
    assert pulled.exit_code == 0, pulled.output
    assert statuses_of(pulled.stdout) == {"demo/r2": "created"}


def statuses_of(table: str) -> dict[str, str]:
    """The run -> status lines of a push, pull or fetch table."""
    rows = [line.split() for line in table.splitlines()[1:]]
    return {row[-2]: " ".join(row[:-2]) for row in rows}


def test_cli_progress_from_a_path_remote_ends_on_the_final_counts(
    local_bare: Path, tmp_path: Path
) -> None:
    log_run(local_bare, "r1", range(3000))
    second = tmp_path / "second.git"
    git("init", "--quiet", "--bare", second)

    result = CliRunner().invoke(main, ["pull", "--repo", str(second), str(local_bare)])

    assert result.exit_code == 0, result.output
    counters = re.findall(r"^([a-z][a-z ]+): (\d+)/(\d+)", result.stderr, re.M)
    assert ("writing pack data", counters[-1][2], counters[-1][2]) in counters
    assert [c for c in counters if c[1] != c[2]] == []


@pytest.mark.parametrize("command", remote_cli.COMMANDS, ids=lambda c: c.name)
def test_every_remote_command_has_help(command: object) -> None:
    result = CliRunner().invoke(command, ["--help"])  # type: ignore[arg-type]
    assert result.exit_code == 0
    assert "--repo" in result.output and "--quiet" in result.output


def test_git_subprocess_sees_no_user_config(git_env: dict[str, str]) -> None:
    out = subprocess.run(
        ["git", "config", "--list", "--show-origin"],
        capture_output=True,
        text=True,
        env={**os.environ},
    ).stdout
    assert "global" not in out and ".gitconfig" not in out


def test_pull_of_a_remote_missing_an_object_takes_the_intact_runs(
    local_bare: Path, tmp_path: Path
) -> None:
    good = log_run(local_bare, "good", range(5))
    broken = log_run(local_bare, "broken", range(5))
    # The broken run's newest commit names a blob the repository lacks.
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "index")}
    ref = f"refs/heads/runs/{broken}"
    plumb = ["git", "--git-dir", str(local_bare)]
    subprocess.run([*plumb, "read-tree", ref], env=env, check=True)
    subprocess.run(
        [*plumb, "update-index", "--cacheinfo", f"100644,{'2' * 40},README.md"],
        env=env,
        check=True,
    )
    tree = subprocess.run(
        [*plumb, "write-tree", "--missing-ok"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    commit = git("--git-dir", local_bare, "commit-tree", tree, "-p", ref, "-m", "x")
    git("--git-dir", local_bare, "update-ref", ref, commit.stdout.strip())
    into = tmp_path / "into.git"
    git("init", "--quiet", "--bare", into)

    result = CliRunner().invoke(main, ["pull", "--repo", str(into), str(local_bare)])

    assert result.exit_code == 7, result.output
    assert f"created      {good}" in result.stdout
    assert f"rejected     {broken}" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"lacks object {'2' * 40}" in errors[0]
    assert steps_of(into, good) == list(range(5))
    fetched = CliRunner().invoke(
        main, ["fetch", "--repo", str(tmp_path / "into.git"), str(local_bare)]
    )
    assert fetched.exit_code == 7, fetched.output
    assert f"refused runs/{broken}: fetching from" in fetched.stderr
    assert (
        f"refs/heads/runs/{broken}" not in git("--git-dir", into, "for-each-ref").stdout
    )
