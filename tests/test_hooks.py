"""The pre-receive and pre-push hooks, run by real git servers and a real git push."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

import gitruns
from gitruns import hooks, remote
from gitruns.chunk import build_chunk, encode_chunk
from gitruns.cli import hooks as hooks_cli
from gitruns.cli.common import GitRunsGroup
from gitruns.cli.main import main
from gitruns.errors import RemoteError
from gitruns.refs import RunRef, Sha
from gitruns.store import RunStore
from tests.conftest import REAL_RUNS
from tests.gitserver import GitServer, git, scrubbed_env

ROOT = Path(__file__).resolve().parents[1]

#: One sample of every importer over the real logs: (format, path under REAL_RUNS).
IMPORTS = [
    ("hf-trainer", "hf-whisper-large-v2-ja"),
    ("hf-trainer", "hf-whisper-tiny-nb-resumed"),
    ("llamafactory", "llamafactory-mistral-translator"),
    ("tensorboard", "hf-t5-summarization-tb"),
    ("lightning", "lightning-csvlogger-opal"),
    ("keras", "keras-csvlogger-mnist"),
    ("ultralytics", "ultralytics-yolov8-fire-smoke"),
    ("sb3-monitor", "wandb-sb3-ppo-cartpole/logs"),
    ("dvclive", "dvclive-sound-event-detection"),
    ("mlflow", "mlflow-filestore-nested"),
    ("mlflow", "mlflow-sqlite-hyperopt/mlflow.db"),
    ("wandb", "wandb-hf-trainer-alpaca"),
]

#: The commands of gitruns/cli/hooks.py under a root group, as the CLI has them.
cli = GitRunsGroup(commands=hooks_cli.COMMANDS)


def log_run(repo: Path, run_id: str, steps: range, **init: object) -> str:
    """Write a run (or more of one) with the public API; return its path."""
    run = gitruns.init(project="demo", id=run_id, repo=str(repo), **init)  # type: ignore[arg-type]
    for step in steps:
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    run.finish()
    return f"demo/{run_id}"


def craft_commit(
    repo: Path, path: str, steps: list[int], data: bytes | None = None
) -> str:
    """Commit a segment on top of a run, bypassing the writer's own rules."""
    store = RunStore.open(repo, create=False)
    try:
        run = store.resolve(path)
        tip = store.tip(run)
        assert tip is not None
        snapshot = store.read_snapshot(tip)
        window = snapshot.window
        if data is None:
            chunk = build_chunk(
                window,
                steps[0] // window * window,
                steps,
                [time.time()] * len(steps),
                {"loss": (list(range(len(steps))), [0.5] * len(steps))},
            )
            data = encode_chunk(chunk)
        snapshot.history.add(steps[0], store.blob(data))
        snapshot.info["last_step"] = steps[-1]
        sha = store.write_commit(snapshot, [tip], f"{path}: crafted\n", "crafted\n")
        assert store.update_ref(run, tip, sha, "crafted")
        return sha.decode()
    finally:
        store.close()


def craft_files(
    repo: Path, path: str, files: dict[str, bytes], mode: str = "100644"
) -> str:
    """Commit the run's tree with ``files`` replaced, on top of its tip, as git can.

    Nothing of gitruns checks the files: this is how a hostile or broken
    writer's commit looks.
    """
    ref = f"refs/heads/runs/{path}"
    env = scrubbed_env({"GIT_INDEX_FILE": str(repo / "crafted.index")})

    def plumbing(*args: str, data: bytes | None = None) -> str:
        proc = subprocess.run(
            ["git", "--git-dir", str(repo), *args],
            input=data,
            env=env,
            capture_output=True,
            check=True,
        )
        return proc.stdout.decode().strip()

    plumbing("read-tree", ref)
    for name, data in files.items():
        blob = plumbing("hash-object", "-w", "--stdin", data=data)
        plumbing("update-index", "--add", "--cacheinfo", f"{mode},{blob},{name}")
    tree = plumbing("write-tree")
    (repo / "crafted.index").unlink()
    commit = plumbing("commit-tree", tree, "-p", ref, "-m", "crafted")
    plumbing("update-ref", ref, commit)
    return commit


def tip(repo: Path, path: str) -> str:
    return git("--git-dir", repo, "rev-parse", f"refs/heads/runs/{path}").stdout.strip()


def remote_refs(url: str) -> dict[str, str]:
    lines = git("ls-remote", url).stdout.splitlines()
    return {ref: sha for sha, ref in (line.split("\t") for line in lines)}


@pytest.fixture
def guarded(git_daemon: GitServer) -> GitServer:
    """A git daemon whose repository has the gitruns pre-receive hook."""
    path = git_daemon.create()
    with closing(Repo(str(path))) as served:
        hooks.install_hook(served, "pre-receive")
    return git_daemon


def stock_push(
    local: Path, url: str, *refspecs: str
) -> subprocess.CompletedProcess[str]:
    return git("--git-dir", local, "push", url, *refspecs, check=False)


# -- pre-receive on a real server ---------------------------------------------------


def test_valid_pushes_pass(
    git_server: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    path = git_server.create()
    with closing(Repo(str(path))) as served:
        hooks.install_hook(served, "pre-receive")
    src = log_run(local_bare, "src", range(120))
    fork = log_run(local_bare, "fork", range(51, 70), fork_from=f"{src}?_step=50")

    # A fork before its parent, the parent, more steps, then a rewind.
    first = remote.push(local_repo, git_server.url(), [RunRef("demo", "fork")])
    second = remote.push(local_repo, git_server.url())
    log_run(local_bare, "src", range(120, 130), resume="must")
    third = remote.push(local_repo, git_server.url())
    log_run(local_bare, "src", range(91, 95), resume_from=f"{src}?_step=90")
    fourth = remote.push(local_repo, git_server.url(), [RunRef("demo", "src")])

    assert [o.status for o in first] == ["created"]
    assert {o.run.path: o.status for o in second} == {
        src: "created",
        fork: "up to date",
    }
    assert {o.run.path: o.status for o in third}[src] == "fast-forward"
    assert [o.status for o in fourth] == ["fast-forward"]
    assert remote_refs(git_server.url())[f"refs/heads/runs/{src}"] == tip(
        local_bare, src
    )


def test_every_imported_real_run_passes(
    guarded: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    runner = CliRunner()
    for fmt, sample in IMPORTS:
        result = runner.invoke(
            main, ["import", fmt, str(REAL_RUNS / sample), "--repo", str(local_bare)]
        )
        assert result.exit_code == 0, result.output

    outcomes = remote.push(local_repo, guarded.url(), check=False)

    assert len(outcomes) > 40
    assert [str(o) for o in outcomes if not o.ok] == []
    assert len(remote_refs(guarded.url())) == len(outcomes)


def test_partial_windows_forks_and_rewinds_inside_a_window_pass(
    guarded: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    # A tiny window and a zero flush interval: every step is its own commit and
    # segment, and fork and rewind points fall inside windows.
    settings = {"window": 10, "flush_interval": 0.0}
    src = log_run(local_bare, "src", range(37), **settings)
    log_run(local_bare, "fork", range(24, 41), fork_from=f"{src}?_step=23", **settings)
    log_run(local_bare, "src", range(16, 30), resume_from=f"{src}?_step=15", **settings)
    segments = git(
        "--git-dir", local_bare, "ls-tree", "-r", "--name-only", f"runs/{src}"
    )

    outcomes = remote.push(local_repo, guarded.url(), check=False)

    assert segments.stdout.count(".msgpack") > 4
    assert [str(o) for o in outcomes if not o.ok] == []


def test_force_push_is_rejected(
    guarded: GitServer, local_bare: Path, tmp_path: Path
) -> None:
    run = log_run(local_bare, "r1", range(10))
    assert (
        stock_push(
            local_bare, guarded.url(), "refs/heads/runs/*:refs/heads/runs/*"
        ).returncode
        == 0
    )
    other = tmp_path / "other.git"
    git("clone", "--quiet", "--bare", guarded.url(), other)
    log_run(other, "r1", range(10, 15), resume="must")
    assert stock_push(other, guarded.url(), f"refs/heads/runs/{run}").returncode == 0
    log_run(local_bare, "r1", range(10, 12), resume="must")

    pushed = stock_push(local_bare, guarded.url(), f"+refs/heads/runs/{run}")

    assert pushed.returncode != 0
    at = tip(local_bare, run)[:10]
    assert f"gitruns: refused refs/heads/runs/{run} {at}: not a fast-forward" in (
        pushed.stderr
    )
    assert remote_refs(guarded.url())[f"refs/heads/runs/{run}"] == tip(other, run)


@pytest.mark.parametrize("scheme", ["path", "file://"])
def test_gitruns_force_push_to_a_path_runs_the_targets_hook(
    local_bare: Path, tmp_path: Path, scheme: str
) -> None:
    served = tmp_path / "served.git"
    git("init", "--quiet", "--bare", served)
    with closing(Repo(str(served))) as target:
        hooks.install_hook(target, "pre-receive")
    url = str(served) if scheme == "path" else f"file://{served}"
    run = log_run(local_bare, "r1", range(10))
    remote.push(Repo(str(local_bare)), url)
    pushed_tip = tip(served, run)
    other = tmp_path / "other.git"
    git("clone", "--quiet", "--mirror", str(served), other)
    log_run(other, "r1", range(10, 15), resume="must")
    remote.push(Repo(str(other)), url)
    log_run(local_bare, "r1", range(10, 12), resume="must")

    result = CliRunner().invoke(
        main, ["push", "--repo", str(local_bare), url, run, "--force"]
    )

    assert result.exit_code == 7, result.output
    assert "not a fast-forward" in result.stderr
    assert tip(served, run) == tip(other, run) != pushed_tip


def test_deletion_is_rejected(guarded: GitServer, local_bare: Path) -> None:
    run = log_run(local_bare, "r1", range(10))
    stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")

    pushed = stock_push(local_bare, guarded.url(), f":refs/heads/runs/{run}")

    assert pushed.returncode != 0
    assert (
        f"refused refs/heads/runs/{run} {tip(local_bare, run)[:10]}: " in pushed.stderr
    )
    assert "cannot be deleted" in pushed.stderr
    assert f"refs/heads/runs/{run}" in remote_refs(guarded.url())


def test_malformed_chunk_is_rejected(
    guarded: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    run = log_run(local_bare, "r1", range(10))
    remote.push(local_repo, guarded.url())
    bad = craft_commit(local_bare, run, [10, 11], data=b"\x82\xa3not a chunk")

    with pytest.raises(RemoteError) as refused:
        remote.push(local_repo, guarded.url())

    message = str(refused.value)
    assert f"refs/heads/runs/{run} {bad[:10]}: malformed chunk" in message
    assert "history/0000/00/000000000010.msgpack" in message
    assert remote_refs(guarded.url())[f"refs/heads/runs/{run}"] != bad


def test_a_segment_that_is_not_a_plain_file_is_rejected_as_readers_refuse_it(
    guarded: GitServer, local_bare: Path, tmp_path: Path
) -> None:
    run = log_run(local_bare, "r1", range(10))
    assert (
        stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}").returncode == 0
    )
    ref = f"refs/heads/runs/{run}"
    segment = git(
        "--git-dir", local_bare, "ls-tree", "-r", "--name-only", ref, "history"
    )
    name = segment.stdout.split()[0]
    data = subprocess.run(
        ["git", "--git-dir", str(local_bare), "cat-file", "blob", f"{ref}:{name}"],
        capture_output=True,
        check=True,
    ).stdout
    bad = craft_files(local_bare, run, {name: data}, mode="100755")

    pushed = stock_push(local_bare, guarded.url(), ref)
    with closing(Repo.init_bare(str(tmp_path / "puller.git"), mkdir=True)) as puller:
        pulled = remote.pull(puller, str(local_bare), check=False)

    assert pushed.returncode != 0
    assert (
        f"refused {ref} {bad[:10]}: segment {name.rsplit('/', 1)[1]} must be a plain "
        "file (mode 100644), not mode 100755" in pushed.stderr
    )
    assert [(o.status, "not mode 100755" in o.message) for o in pulled] == [
        ("rejected", True)
    ]


def test_a_second_name_for_a_segment_is_rejected_and_unreadable(
    guarded: GitServer, local_bare: Path
) -> None:
    run = log_run(local_bare, "r1", range(10))
    ref = f"refs/heads/runs/{run}"
    name = "history/0000/00/000000000000.msgpack"
    data = subprocess.run(
        ["git", "--git-dir", str(local_bare), "cat-file", "blob", f"{ref}:{name}"],
        capture_output=True,
        check=True,
    ).stdout
    craft_files(local_bare, run, {"history/0000/00/0.msgpack": data})

    pushed = stock_push(local_bare, guarded.url(), ref)

    assert pushed.returncode != 0
    assert "history/0000/00/0.msgpack is not a segment file name" in pushed.stderr
    with pytest.raises(gitruns.ChunkFormatError, match="not a segment file name"):
        gitruns.Api(str(local_bare)).run(run).history(pandas=False)


def test_step_order_violation_is_rejected(guarded: GitServer, local_bare: Path) -> None:
    run = log_run(local_bare, "r1", range(10))
    stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")
    bad = craft_commit(local_bare, run, [5, 6])

    pushed = stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")

    assert pushed.returncode != 0
    assert (
        f"refused refs/heads/runs/{run} {bad[:10]}: step order: a segment starts at "
        "step 5, not after the run's step 9"
    ) in pushed.stderr


def test_a_commit_of_another_run_is_rejected(
    guarded: GitServer, local_bare: Path
) -> None:
    run = log_run(local_bare, "r1", range(5))

    pushed = stock_push(
        local_bare, guarded.url(), f"refs/heads/runs/{run}:refs/heads/runs/demo/r2"
    )

    assert pushed.returncode != 0
    assert (
        f"run.json names run {run}, but this commit belongs to demo/r2" in pushed.stderr
    )


def test_bad_run_ref_name_is_rejected_and_other_refs_pass(
    guarded: GitServer, local_bare: Path, tmp_path: Path
) -> None:
    run = log_run(local_bare, "r1", range(5))
    work = tmp_path / "code"
    git("init", "--quiet", work)
    git("commit", "--quiet", "--allow-empty", "-m", "code", cwd=work)

    nested = stock_push(
        local_bare, guarded.url(), f"refs/heads/runs/{run}:refs/heads/runs/demo/r1/x"
    )
    code = git("push", guarded.url(), "HEAD:refs/heads/main", cwd=work, check=False)

    assert nested.returncode != 0
    assert (
        "gitruns: refused refs/heads/runs/demo/r1/x "
        f"{tip(local_bare, run)[:10]}: not a valid run branch: "
        "must be runs/<project>/<run_id>"
    ) in nested.stderr
    assert "b'" not in nested.stderr
    assert code.returncode == 0, code.stderr


def test_deep_run_json_is_refused_with_one_line_naming_ref_and_commit(
    guarded: GitServer, local_bare: Path
) -> None:
    run = log_run(local_bare, "r1", range(5))
    stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")
    before = tip(local_bare, run)
    bad = craft_files(local_bare, run, {"run.json": b"[" * 100_000 + b"]" * 100_000})

    pushed = stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")

    assert pushed.returncode != 0
    said = [line for line in pushed.stderr.splitlines() if "gitruns" in line]
    assert len(said) == 1, pushed.stderr
    assert said[0].startswith(
        f"remote: gitruns: refused refs/heads/runs/{run} {bad[:10]}: "
    )
    assert "run.json" in said[0] and "itself failed" not in said[0]
    assert remote_refs(guarded.url())[f"refs/heads/runs/{run}"] == before


def test_gitruns_push_of_a_refused_run_says_the_reason_once(
    guarded: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    good = log_run(local_bare, "good", range(5))
    bad_run = log_run(local_bare, "bad", range(5))
    bad = craft_commit(local_bare, bad_run, [2, 3])

    result = CliRunner().invoke(
        main, ["push", "--repo", str(local_bare), guarded.url()]
    )

    assert result.exit_code == 7
    said = result.stdout + result.stderr
    reason = "step order: a segment starts at step 2, not after the run's step 4"
    assert said.count(reason) == 1 and "b'" not in said
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    advice = (
        "the server's hooks decide what it accepts: fix what they say, or ask the "
        "server's admin"
    )
    assert errors == [
        f"Error: push to {guarded.url()} refused runs/{bad_run}: pre-receive "
        f"hook declined (remote: gitruns: refused refs/heads/runs/{bad_run} "
        f"{bad[:10]}: {reason}); {advice}",
        f"Error: push to {guarded.url()} refused runs/{good}: pre-receive hook "
        f"declined, with the rest of the push; {advice}",
    ]


def test_one_bad_ref_refuses_the_whole_push(
    guarded: GitServer, local_bare: Path
) -> None:
    good = log_run(local_bare, "good", range(5))
    bad_run = log_run(local_bare, "bad", range(5))
    craft_commit(local_bare, bad_run, [2, 3])

    pushed = stock_push(
        local_bare, guarded.url(), "--atomic", "refs/heads/runs/*:refs/heads/runs/*"
    )

    assert pushed.returncode != 0
    refused = [
        line for line in pushed.stderr.splitlines() if "gitruns: refused" in line
    ]
    assert len(refused) == 1 and "demo/bad" in refused[0]
    assert f"refs/heads/runs/{good}" not in remote_refs(guarded.url())


def test_unchecked_commits_cannot_be_smuggled_through_another_branch(
    guarded: GitServer, local_bare: Path
) -> None:
    run = log_run(local_bare, "r1", range(10))
    stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")
    craft_commit(local_bare, run, [3, 4])
    # Outside runs/ anything goes, so the bad commit reaches the server's objects.
    assert (
        stock_push(
            local_bare, guarded.url(), f"refs/heads/runs/{run}:refs/heads/junk"
        ).returncode
        == 0
    )

    pushed = stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")

    assert pushed.returncode != 0 and "step order" in pushed.stderr


def test_server_config_can_allow_rewrites(guarded: GitServer, local_bare: Path) -> None:
    run = log_run(local_bare, "r1", range(5))
    stock_push(local_bare, guarded.url(), f"refs/heads/runs/{run}")
    git("config", "gitruns.allowRewrite", "true", cwd=guarded.base / "runs.git")

    deleted = stock_push(local_bare, guarded.url(), f":refs/heads/runs/{run}")

    assert deleted.returncode == 0, deleted.stderr
    assert f"refs/heads/runs/{run}" not in remote_refs(guarded.url())


def test_pre_receive_checks_only_the_new_commits(
    local_bare: Path, tmp_path: Path
) -> None:
    log_run(local_bare, "r1", range(40))
    for first in range(40, 100, 10):
        log_run(local_bare, "r1", range(first, first + 10), resume="must")
    branch = Ref(RunRef("demo", "r1").ref)
    with closing(Repo(str(local_bare))) as r:
        head = Sha(r.refs[branch])
        old = Sha(
            git("--git-dir", local_bare, "rev-parse", f"{head.decode()}^")
            .stdout.strip()
            .encode()
        )
        # As the server sees it during pre-receive: the branch still at ``old``.
        r.refs[branch] = ObjectID(old)
        checker = hooks.server_checker(r, None, allow_rewrite=False)
        store_view = hooks.Checker(
            r.object_store, lambda sha, run: False, allow_rewrite=False
        )

        update = hooks.RefUpdate(branch, old, head)
        assert checker.check([update]) == []
        assert store_view.check([hooks.RefUpdate(update.ref, None, head)]) == []

    assert len(checker._checked) == 1
    count = git("--git-dir", local_bare, "rev-list", "--count", head.decode())
    assert len(store_view._checked) == int(count.stdout)


# -- pre-push on the client ---------------------------------------------------------


def test_pre_push_stops_a_bad_run_before_it_leaves(
    git_daemon: GitServer, tmp_path: Path, git_env: dict[str, str]
) -> None:
    git_daemon.create()
    work = tmp_path / "project"
    git("init", "--quiet", work)
    git("remote", "add", "origin", git_daemon.url(), cwd=work)
    run = log_run(work, "r1", range(10))
    result = CliRunner().invoke(cli, ["hooks", "install", "--repo", str(work)])
    assert result.exit_code == 0, result.output
    assert (
        git(
            "push", "origin", f"refs/heads/runs/{run}", cwd=work, check=False
        ).returncode
        == 0
    )
    git("fetch", "--quiet", "origin", cwd=work)
    bad = craft_commit(work, run, [4, 5])

    pushed = git("push", "origin", f"refs/heads/runs/{run}", cwd=work, check=False)

    assert pushed.returncode != 0
    assert (
        f"gitruns: refused refs/heads/runs/{run} {bad[:10]}: step order"
        in pushed.stderr
    )
    assert remote_refs(git_daemon.url())[f"refs/heads/runs/{run}"] != bad


def test_gitruns_push_runs_an_installed_pre_push_check(
    git_daemon: GitServer, local_bare: Path, local_repo: Repo
) -> None:
    git_daemon.create()
    good = log_run(local_bare, "good", range(5))
    bad_run = log_run(local_bare, "bad", range(5))
    bad = craft_commit(local_bare, bad_run, [1, 2])
    hooks.install_hook(local_repo, "pre-push")

    checked = remote.push(local_repo, git_daemon.url(), check=False)
    unchecked = remote.push(local_repo, git_daemon.url(), verify=False)

    outcomes = {o.run.path: o for o in checked}
    assert outcomes[good].status == "created"
    assert outcomes[bad_run].status == "rejected"
    assert outcomes[bad_run].message.startswith(f"pre-push check at {bad[:10]}: step")
    assert {o.run.path: o.status for o in unchecked}[bad_run] == "created"


def test_pre_push_refusal_says_how_this_repository_lifts_it(
    local_bare: Path, local_repo: Repo
) -> None:
    run = log_run(local_bare, "r1", range(3))
    at = tip(local_bare, run)
    err = io.StringIO()
    line = f"(delete) {'0' * 40} refs/heads/runs/{run} {at}\n".encode()

    status = hooks.run_hook(
        "pre-push", ["origin"], io.BytesIO(line), err, {"GIT_DIR": str(local_bare)}
    )

    assert status == 1
    assert err.getvalue() == (
        f"gitruns: refused refs/heads/runs/{run} {at[:10]}: run branches cannot be "
        "deleted: runs are append-only (fork or rewind instead); `git config "
        "gitruns.allowRewrite true` in this repository lifts this pre-push check "
        "(a guarded server still refuses it)\n"
    )


def test_parse_pre_push_lines() -> None:
    zero = "0" * 40
    lines = [
        f"refs/heads/runs/p/a {'a' * 40} refs/heads/runs/p/a {zero}",
        f"(delete) {zero} refs/heads/runs/p/b {'b' * 40}",
    ]

    updates = hooks.parse_pre_push(lines)

    assert updates == [
        hooks.RefUpdate(b"refs/heads/runs/p/a", None, Sha(b"a" * 40)),
        hooks.RefUpdate(b"refs/heads/runs/p/b", Sha(b"b" * 40), None),
    ]


# -- installing ---------------------------------------------------------------------


def test_source_tree_hooks_are_the_installed_script(tmp_path: Path) -> None:
    for kind in ("pre-receive", "pre-push"):
        script = ROOT / "hooks" / kind
        assert script.read_text() == hooks.hook_script(kind)
        assert os.access(script, os.X_OK)


def test_source_tree_hook_runs_from_a_checkout(local_bare: Path) -> None:
    # No update under runs/: the hook has nothing to say and lets the push in.
    # The script's `env python3` must find an interpreter that has gitruns'
    # dependencies, as it does in a shell whose virtual environment is active.
    zero = "0" * 40
    interpreter_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([interpreter_dir, os.environ.get("PATH", "")])
    proc = subprocess.run(
        [str(ROOT / "hooks" / "pre-receive")],
        input=f"{zero} {'a' * 40} refs/heads/main\n",
        capture_output=True,
        text=True,
        cwd=local_bare,
        env=scrubbed_env({"GIT_DIR": str(local_bare), "PATH": path}),
    )
    assert proc.returncode == 0, proc.stderr


def test_install_writes_this_interpreter_and_keeps_foreign_hooks(
    local_bare: Path,
) -> None:
    runner = CliRunner()

    first = runner.invoke(
        cli, ["hooks", "install", "--server", "--repo", str(local_bare)]
    )
    again = runner.invoke(
        cli, ["hooks", "install", "--server", "--repo", str(local_bare)]
    )
    (local_bare / "hooks" / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    foreign = runner.invoke(cli, ["hooks", "install", "--repo", str(local_bare)])
    forced = runner.invoke(
        cli, ["hooks", "install", "--force", "--repo", str(local_bare)]
    )

    installed = (local_bare / "hooks" / "pre-receive").read_text()
    assert first.exit_code == 0 and again.exit_code == 0
    assert installed.startswith(f"#!{sys.executable}\n")
    assert os.access(local_bare / "hooks" / "pre-receive", os.X_OK)
    assert foreign.exit_code == 6 and "not a gitruns hook" in foreign.output
    assert forced.exit_code == 0
    assert "gitruns.hooks" in (local_bare / "hooks" / "pre-push").read_text()


def test_a_hook_that_cannot_read_the_repository_fails_closed(tmp_path: Path) -> None:
    err = io.StringIO()
    line = f"{'0' * 40} {'a' * 40} refs/heads/runs/demo/r1\n".encode()
    not_a_repository = tmp_path / "file"
    not_a_repository.write_text("x")

    status = hooks.run_hook(
        "pre-receive", [], io.BytesIO(line), err, {"GIT_DIR": str(not_a_repository)}
    )

    assert status == 1
    assert err.getvalue().startswith("gitruns: the pre-receive check itself failed")
    assert len(err.getvalue().splitlines()) == 1


def test_hook_reports_unknown_kind() -> None:
    err = io.StringIO()
    status = hooks.run_hook("update", [], io.BytesIO(b""), err, {})
    assert status == 2 and "unknown hook" in err.getvalue()


def test_hooks_commands_have_help() -> None:
    runner = CliRunner()
    for command in (
        hooks_cli.hooks,
        hooks_cli.install,
        hooks_cli.setup,
        hooks_cli.textconv,
    ):
        result = runner.invoke(command, ["--help"])
        assert result.exit_code == 0 and len(result.output) > 80
