"""Export: CSV and JSON lines that import back to the same history."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gitruns
from gitruns.cli.common import GitRunsGroup
from gitruns.cli.export import export_command
from gitruns.cli.imports import import_command
from gitruns.export import csv_cell, export_history
from gitruns.importers import import_runs
from gitruns.importers.table import read_table
from gitruns.reader import RunView
from tests.conftest import REAL_RUNS

# Values that trip naive writers: every float spelling, int64 ends, types.
ODD_VALUES: list[Any] = [
    0.1,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    1.7976931348623157e308,
    1 / 3,
    2**63 - 1,
    -(2**63),
    True,
    None,
    'a, "quoted" text',
]


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the export command as ``gitruns`` would (errors mapped to exit codes)."""
    result = CliRunner().invoke(GitRunsGroup(commands=[export_command]), list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def same(a: Any, b: Any) -> bool:
    """Same stored value: same type, and for floats the same bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def rows_match(
    left: list[dict[str, Any]], right: list[dict[str, Any]], eq: Any
) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys(), (a, b)
        for key in a:
            assert eq(a[key], b[key]), (a["_step"], key, a[key], b[key])


@pytest.fixture
def odd(repo: Path) -> RunView:
    """A run holding every awkward value, sparse metrics and a text metric."""
    with gitruns.init(project="odd", id="values", repo=repo) as run:
        for i, value in enumerate(ODD_VALUES):
            row: dict[str, Any] = {"x": value, "loss": 1.0 / (i + 1)}
            if i % 3 == 0:
                row["eval"] = i * 0.25
            run.log(row)
    return gitruns.Api(repo).run("odd/values")


@pytest.mark.parametrize("value", [v for v in ODD_VALUES if isinstance(v, float)])
def test_csv_cell_floats_read_back_bit_for_bit(value: float) -> None:
    text = csv_cell(value)
    assert same(float(text), value), text


def test_csv_cell_spelling() -> None:
    assert [csv_cell(v) for v in (math.nan, math.inf, -math.inf, -0.0)] == [
        "nan",
        "inf",
        "-inf",
        "-0.0",
    ]
    assert csv_cell(None) == "" and csv_cell(True) == "True" and csv_cell(7) == "7"


def test_csv_export_of_the_seed_fork(seed_runs: tuple[RunView, RunView]) -> None:
    _, fork = seed_runs
    code, out, err = invoke("export", "demo/forked", "--repo", str(fork.store.git_dir))
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["_step", "_timestamp", "additional_metric", "metric"]
    body = table[1:]
    assert [int(r[0]) for r in body] == list(range(401))

    # Inherited steps, the fork's own steps, and the gaps of sparse metrics.
    by_step = {int(r[0]): r for r in body}
    assert by_step[200][2:] == ["", "200"]
    assert by_step[201][2:] == ["", "200"]
    assert by_step[202][2:] == [repr(200 * 1.1), ""]
    assert float(by_step[399][3]) == 299 + 2 * math.sin(299 / 3.0)
    history = list(fork.scan_history())
    assert [float(r[1]) for r in body] == [r["_timestamp"] for r in history]


def test_jsonl_export_is_scan_history(
    odd: RunView, seed_runs: tuple[RunView, RunView]
) -> None:
    for view in (odd, *seed_runs):
        out = io.StringIO()
        count = export_history(view, out, "jsonl")
        lines = out.getvalue().splitlines()
        assert count == len(lines) == len(list(view.scan_history()))
        rows_match(
            [json.loads(line) for line in lines], list(view.scan_history()), same
        )


def test_csv_export_reads_back_with_the_importers_reader(
    odd: RunView, tmp_path: Path
) -> None:
    path = tmp_path / "odd.csv"
    with path.open("w", newline="") as handle:
        assert export_history(odd, handle, "csv") == len(ODD_VALUES)
    table = read_table(path)
    assert table.header == ["_step", "_timestamp", "eval", "loss", "x"]
    assert table.column("loss") == [1.0 / (i + 1) for i in range(len(ODD_VALUES))]
    assert table.column("eval") == [i * 0.25 if i % 3 == 0 else None for i in range(13)]
    # A column of mixed types stays text in CSV; JSON lines keeps the types.
    assert table.column("x") == [csv_cell(v) or None for v in ODD_VALUES]


def _import_csv(path: Path, repo: Path) -> RunView:
    """Import a gitruns CSV export as a user would: ``gitruns import gitruns-csv``."""
    group = GitRunsGroup(commands=[import_command])
    args = ["import", "gitruns-csv", str(path), "--repo", str(repo), "-p", "back"]
    done = CliRunner().invoke(group, args)
    assert done.exit_code == 0, done.output
    assert "1 imported, 0 already imported, 0 skipped" in done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("imported ")]
    return gitruns.Api(repo).run(line.split()[1])


def _import_jsonl(path: Path, repo: Path) -> RunView:
    """Import a gitruns JSON lines export with the public ``import_runs``."""
    report = import_runs("gitruns-jsonl", [path], repo=repo, project="back")
    assert [o.status for o in report.outcomes] == ["imported"]
    return gitruns.Api(repo).run(report.outcomes[0].path)


def test_round_trip_csv_export_import(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    _, fork = seed_runs
    path = tmp_path / "fork.csv"
    code, _, err = invoke(
        "export", "demo/forked", "-o", str(path), "--repo", str(fork.store.git_dir)
    )
    assert code == 0 and "exported 401 steps" in err
    back = _import_csv(path, tmp_path / "back.git")

    # Cells are typed one by one: "metric" is an int up to step 299 and a
    # float from 301 on, and keeps both; the step times come back bit for bit.
    rows = list(back.scan_history())
    rows_match(rows, list(fork.scan_history()), same)
    assert type(rows[299]["metric"]) is int and type(rows[301]["metric"]) is float
    assert dict(back.summary) == dict(fork.summary)
    assert back.source is not None and back.source["format"] == "gitruns-csv"
    assert back.fork_from is None  # lineage is not in the file: a root run


# Text that CSV cannot tell from a number, a bool or "not logged".
CSV_AMBIGUOUS: dict[str, Any] = {
    "1.5": 1.5,
    "007": 7,
    "nan": math.nan,
    "True": True,
    "": None,
}
# Text that CSV keeps as written: padding, quotes, separators, line breaks.
CSV_EXACT = [" 7 ", "1_000", "0x10", "true", "a,\r\nb", 'say "hi"', "line\u2028sep"]


@pytest.fixture
def texts(repo: Path) -> RunView:
    with gitruns.init(project="odd", id="texts", repo=repo) as run:
        for i, text in enumerate([*CSV_AMBIGUOUS, *CSV_EXACT]):
            run.log({"text": text, "none": None, "n": i})
    return gitruns.Api(repo).run("odd/texts")


def test_round_trip_csv_keeps_values_up_to_its_limits(
    odd: RunView, texts: RunView, tmp_path: Path
) -> None:
    for view in (odd, texts):
        path = tmp_path / f"{view.id}.csv"
        with path.open("w", newline="") as handle:
            export_history(view, handle, "csv")
        back = list(_import_csv(path, tmp_path / f"{view.id}.git").scan_history())
        original = list(view.scan_history())

        # A logged None (and an empty string) is an empty cell: "not logged".
        expected = [
            {k: v for k, v in row.items() if v is not None and v != ""}
            for row in original
        ]
        if view is texts:
            for row, text in zip(expected, CSV_AMBIGUOUS):
                if text:
                    row["text"] = CSV_AMBIGUOUS[text]
        rows_match(back, expected, same)
    assert [row["text"] for row in back[len(CSV_AMBIGUOUS) :]] == CSV_EXACT


def test_round_trip_jsonl_has_none_of_the_csv_limits(
    texts: RunView, tmp_path: Path
) -> None:
    path = tmp_path / "texts.jsonl"
    with path.open("w") as handle:
        export_history(texts, handle, "jsonl")
    back = _import_jsonl(path, tmp_path / "back.git")
    rows = list(back.scan_history())
    rows_match(rows, list(texts.scan_history()), same)
    assert [r["text"] for r in rows] == [*CSV_AMBIGUOUS, *CSV_EXACT]
    assert all(r["none"] is None for r in rows)


def test_round_trip_keeps_a_step_with_nothing_logged(
    repo: Path, tmp_path: Path
) -> None:
    with gitruns.init(project="p", id="gap", repo=repo) as run:
        run.log({"x": 1})
        run.log({})
        run.log({"x": 2})
    view = gitruns.Api(repo).run("p/gap")
    assert [r["_step"] for r in view.scan_history()] == [0, 1, 2]
    path = tmp_path / "gap.jsonl"
    with path.open("w") as handle:
        export_history(view, handle, "jsonl")
    back = _import_jsonl(path, tmp_path / "back.git")
    rows_match(list(back.scan_history()), list(view.scan_history()), same)


def test_round_trip_of_a_real_run_in_both_formats(tmp_path: Path) -> None:
    source = REAL_RUNS / "hf-whisper-large-v2-ja" / "trainer_state.json"
    repo = tmp_path / "runs.git"
    (outcome,) = import_runs("hf-trainer", [source], repo=repo).outcomes
    view = gitruns.Api(repo).run(outcome.path)
    original = list(view.scan_history())
    assert len(original) == 200

    for fmt in ("csv", "jsonl"):
        path = tmp_path / f"whisper.{fmt}"
        with path.open("w", newline="") as handle:
            export_history(view, handle, fmt)
        importer = _import_csv if fmt == "csv" else _import_jsonl
        back = importer(path, tmp_path / f"back-{fmt}.git")
        rows_match(list(back.scan_history()), original, same)


def test_exports_of_one_run_import_once(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    _, fork = seed_runs
    full, head = tmp_path / "full.jsonl", tmp_path / "head.jsonl"
    with full.open("w") as handle:
        export_history(fork, handle, "jsonl")
    with head.open("w") as handle:
        export_history(fork, handle, "jsonl", max_step=100)
    repo = tmp_path / "back.git"

    # The shorter export is a prefix of the longer: a snapshot, imported once.
    report = import_runs("gitruns-jsonl", [head, full], repo=repo)
    assert [o.status for o in report.outcomes] == ["imported"]
    assert [s.path for s in report.skipped] == [str(head)]
    again = import_runs("gitruns-jsonl", [full], repo=repo)
    assert [o.status for o in again.outcomes] == ["exists"]
    assert len(gitruns.Api(repo).runs()) == 1


def test_round_trip_jsonl_export_import_is_exact(
    seed_runs: tuple[RunView, RunView], odd: RunView, tmp_path: Path
) -> None:
    for view in (odd, seed_runs[1]):
        path = tmp_path / f"{view.id}.jsonl"
        with path.open("w") as handle:
            export_history(view, handle, "jsonl")
        back = _import_jsonl(path, tmp_path / f"{view.id}.git")
        rows_match(list(back.scan_history()), list(view.scan_history()), same)


def test_round_trip_gives_the_same_pandas_history(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    pandas = pytest.importorskip("pandas")
    _, fork = seed_runs
    path = tmp_path / "fork.jsonl"
    with path.open("w") as handle:
        export_history(fork, handle, "jsonl")
    back = _import_jsonl(path, tmp_path / "back.git")
    pandas.testing.assert_frame_equal(
        back.history(pandas=True), fork.history(pandas=True)
    )
    keys = ["additional_metric"]
    pandas.testing.assert_frame_equal(back.history(keys=keys), fork.history(keys=keys))


def test_keys_and_step_range_pick_rows_as_scan_history(
    seed_runs: tuple[RunView, RunView],
) -> None:
    _, fork = seed_runs
    repo = str(fork.store.git_dir)
    code, out, _ = invoke(
        "export",
        "forked",
        "-f",
        "jsonl",
        "-k",
        "additional_metric",
        "--min-step",
        "250",
        "--max-step",
        "300",
        "--repo",
        repo,
    )
    assert code == 0
    got = [json.loads(line) for line in out.splitlines()]
    want = list(
        fork.scan_history(
            keys=["additional_metric", "_timestamp"], min_step=250, max_step=300
        )
    )
    assert [r["_step"] for r in got] == list(range(250, 300, 2))
    rows_match(got, want, same)

    code, out, _ = invoke(
        "export", "forked", "-k", "metric", "--max-step", "5", "--repo", repo
    )
    assert out.splitlines()[0] == "_step,_timestamp,metric"
    assert [line.split(",")[2] for line in out.splitlines()[1:]] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]


def test_unknown_key_is_a_clear_error(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    _, fork = seed_runs
    target = tmp_path / "out.csv"
    code, _, err = invoke(
        "export",
        "forked",
        "-k",
        "loss",
        "-o",
        str(target),
        "--repo",
        str(fork.store.git_dir),
    )
    assert code == 3
    assert "logged no metric 'loss'" in err and "additional_metric, metric" in err
    # Nothing half-written is left behind.
    assert list(tmp_path.glob("*out.csv*")) == []


def test_output_file_matches_stdout(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    _, fork = seed_runs
    repo = str(fork.store.git_dir)
    for fmt in ("csv", "jsonl"):
        target = tmp_path / f"fork.{fmt}"
        code, out, _ = invoke("export", "forked", "-f", fmt, "--repo", repo)
        assert code == 0
        assert (
            invoke("export", "forked", "-f", fmt, "-o", str(target), "--repo", repo)[0]
            == 0
        )
        assert target.read_text() == out
    assert sorted(
        p.name for p in tmp_path.iterdir() if p.suffix in (".csv", ".jsonl", ".tmp")
    ) == [
        "fork.csv",
        "fork.jsonl",
    ]


def test_export_of_an_unknown_run(repo: Path) -> None:
    gitruns.init(project="p", id="one", repo=repo).finish()
    code, _, err = invoke("export", "nope", "--repo", str(repo))
    assert code == 3 and "no run 'nope'" in err
