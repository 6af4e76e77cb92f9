"""The gitruns diff driver: chunks as text rows, through `git diff` and `git log -p`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import gitruns
from gitruns import textconv
from gitruns.chunk import build_chunk, encode_chunk
from gitruns.cli import hooks as hooks_cli
from gitruns.cli.common import GitRunsGroup
from tests.gitserver import git

#: The commands of gitruns/cli/hooks.py under a root group, as the CLI has them.
cli = GitRunsGroup(commands=hooks_cli.COMMANDS)


@pytest.fixture
def runs(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A bare repository with a run of 300 steps and a fork of it at step 200."""
    repo = tmp_path / "runs.git"
    src = gitruns.init(project="demo", id="src", repo=str(repo))
    for i in range(300):
        src.log({"metric": float(i)}, step=i)
    src.finish()
    fork = gitruns.init(
        project="demo", id="fork", repo=str(repo), fork_from="demo/src?_step=200"
    )
    for i in range(201, 211):
        fork.log({"metric": i + 0.5, "extra": i}, step=i)
    fork.finish()
    return repo


def test_chunk_text_has_one_row_per_step_and_one_column_per_metric() -> None:
    chunk = build_chunk(
        10,
        10,
        [10, 11, 12],
        [0.0, 1.5, 3.0],
        {
            "loss": ([0, 1, 2], [0.5, float("nan"), -0.0]),
            "flag": ([1], [True]),
            "note": ([0, 2], ["a\tb", None]),
        },
    )

    lines = textconv.chunk_text(chunk).splitlines()

    assert lines[0].startswith("# gitruns chunk: window 10 from step 10, steps 10..12")
    assert lines[1].split("\t") == ["_step", "_timestamp", "flag", "loss", "note"]
    assert lines[2].split("\t") == [
        "10",
        "1970-01-01T00:00:00.000Z",
        "-",
        "0.5",
        '"a\\tb"',
    ]
    assert lines[3].split("\t") == [
        "11",
        "1970-01-01T00:00:01.500Z",
        "true",
        "nan",
        "-",
    ]
    assert lines[4].split("\t") == [
        "12",
        "1970-01-01T00:00:03.000Z",
        "-",
        "-0.0",
        "null",
    ]
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (2**62, str(2**62)),
        (False, "false"),
        ("x", '"x"'),
        (None, "null"),
    ],
)
def test_format_value_is_exact(value: gitruns.chunk.Value, text: str) -> None:
    assert textconv.format_value(value) == text


def test_textconv_command_prints_a_chunk_file(tmp_path: Path) -> None:
    chunk = build_chunk(1000, 0, [0, 1], [0.0, 0.0], {"acc": ([0, 1], [1, 2])})
    path = tmp_path / "000000000000.msgpack"
    path.write_bytes(encode_chunk(chunk))

    result = CliRunner().invoke(cli, ["textconv", str(path)])

    assert result.exit_code == 0
    assert result.output.splitlines()[2:] == [
        "0\t1970-01-01T00:00:00.000Z\t1",
        "1\t1970-01-01T00:00:00.000Z\t2",
    ]


def test_a_damaged_file_gives_one_line_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.msgpack"
    path.write_bytes(b"\x00\x01garbage")

    assert textconv.main([str(path)]) == 0
    assert textconv.file_text(path).startswith(
        "# not a readable gitruns chunk (9 bytes)"
    )


def test_git_log_p_shows_metric_rows_after_setup(runs: Path) -> None:
    result = CliRunner().invoke(cli, ["setup", "--repo", str(runs)])
    again = CliRunner().invoke(cli, ["setup", "--repo", str(runs)])

    log = git("--git-dir", runs, "log", "-p", "runs/demo/fork").stdout
    diff = git("--git-dir", runs, "diff", "runs/demo/src", "runs/demo/fork").stdout

    assert result.exit_code == 0 and "diff.gitruns.textconv" in result.output
    assert "already set up" in again.output
    assert "_step\t_timestamp\textra\tmetric" in log
    assert any(
        line.startswith("+210\t") and line.endswith("\t210\t210.5")
        for line in log.splitlines()
    )
    assert "Binary files" not in log
    # The fork's cut keeps steps up to 200; the source's steps after it show as removed.
    assert any(line.startswith("-250\t") for line in diff.splitlines())
    assert any(line.startswith("+205\t") for line in diff.splitlines())


def test_without_setup_git_shows_chunks_as_binary(runs: Path) -> None:
    log = git("--git-dir", runs, "log", "-p", "runs/demo/fork").stdout
    assert "_step\t_timestamp" not in log


def test_setup_in_a_code_repository_keeps_its_work_tree(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    code = tmp_path / "code"
    git("init", "--quiet", code)
    git("commit", "--quiet", "--allow-empty", "-m", "code", cwd=code)
    run = gitruns.init(project="demo", id="r1", repo=str(code))
    run.log({"loss": 0.25}, step=0)
    run.finish()

    result = CliRunner().invoke(cli, ["setup", "--repo", str(code)])
    log = git("log", "-p", "runs/demo/r1", cwd=code).stdout

    assert result.exit_code == 0, result.output
    assert (code / ".git" / "info" / "attributes").read_text().count(
        "diff=gitruns"
    ) == 1
    assert git("status", "--porcelain", cwd=code).stdout == ""
    assert "+0\t" in log and "\t0.25" in log
