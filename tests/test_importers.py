"""Importers: each format on the real samples of SOURCES.md, then written to Git."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gitruns
from gitruns.cli.common import GitRunsGroup
from gitruns.cli.imports import import_command
from gitruns.errors import ImportFormatError
from gitruns.importers import ImportedRun, import_runs, read_source
from gitruns.importers.gitruns_export import read_cell
from gitruns.importers.wandb_log import BLOCK, FILE_HEADER, scan
from tests.conftest import REAL_RUNS, git

INT64_MAX = 2**63 - 1


def needs(module: str) -> Any:
    """Skip a test whose format reader needs an optional package."""
    return pytest.importorskip(module, reason=f"the {module} extra is not installed")


def only(parsed_runs: list[ImportedRun]) -> ImportedRun:
    assert len(parsed_runs) == 1, [r.path for r in parsed_runs]
    return parsed_runs[0]


def column(run: ImportedRun, key: str) -> dict[int, Any]:
    return {r.step: r.metrics[key] for r in run.records if key in r.metrics}


def history(view: Any) -> list[dict[str, Any]]:
    """A run's history without the wall-clock column (which differs per run)."""
    return [
        {k: v for k, v in row.items() if k != "_timestamp"}
        for row in view.scan_history()
    ]


# --- 1, 2, 3, 4: Hugging Face and LLaMA-Factory ---------------------------------------


def test_hf_snapshots_of_one_log_import_once() -> None:
    parsed = read_source("hf-trainer", [REAL_RUNS / "hf-whisper-large-v2-ja"])

    run = only(parsed.runs)
    assert run.path.endswith("hf-whisper-large-v2-ja/trainer_state.json")
    assert len(parsed.skipped) == 5  # git-history snapshots at steps 1000..5000
    assert all("snapshot" in s.reason for s in parsed.skipped)
    assert run.stats.rows == 206
    # Eval entries share the step of the train entry before them; step 5000
    # holds train, eval and the final summary: 206 rows on 200 steps.
    assert len(run.records) == 200 and run.stats.merged == 6
    assert run.steps[0] == 25 and run.steps[-1] == 5000
    assert run.conflicts == []
    last = run.records[-1].metrics
    assert {"loss", "eval_wer", "train_runtime"} <= last.keys()
    assert max(column(run, "epoch").values()) == 38.17
    assert run.summary["best_metric"] == 0.7431560204762965
    assert run.config["max_steps"] == 5000


def test_hf_resumed_run_keeps_its_steps_and_reports_epoch_resets() -> None:
    run = only(
        read_source("hf-trainer", [REAL_RUNS / "hf-whisper-tiny-nb-resumed"]).runs
    )

    assert run.stats.rows == 2101 and len(run.records) == 2000
    assert run.stats.merged == 101 and run.conflicts == []
    assert run.fork_of is None
    assert run.stats.resets == {"epoch": [5050, 52050, 66050]}
    assert len(column(run, "eval_wer")) == 100
    # INT64_MAX is read exactly, as an int, not a float.
    assert run.config["num_train_epochs"] == INT64_MAX
    assert type(run.config["num_train_epochs"]) is int


def test_llamafactory_log_keeps_strings_as_written() -> None:
    run = only(
        read_source(
            "llamafactory", [REAL_RUNS / "llamafactory-mistral-translator"]
        ).runs
    )

    assert run.stats.rows == 867 and len(run.records) == 866
    assert run.steps[0] == 10 and run.steps[-1] == 8660
    assert "current_steps" not in run.keys
    last = run.records[-1].metrics
    assert last["throughput"] == "0.00" and last["elapsed_time"] == "5:39:46"
    assert last["loss"] == 0.1333  # the last line, without loss, merged in
    assert {type(v) for v in column(run, "throughput").values()} == {str}
    assert set(column(run, "total_tokens").values()) == {0}
    assert run.conflicts == []


def test_llamafactory_trainer_state_and_checkpoints_are_one_run() -> None:
    parsed = read_source("hf-trainer", [REAL_RUNS / "llamafactory-mistral-translator"])

    run = only(parsed.runs)
    assert sorted(Path(s.path).parent.name for s in parsed.skipped) == [
        "checkpoint-4500",
        "checkpoint-500",
    ]
    assert len(run.records) == 866 and "grad_norm" in run.keys


# --- TensorBoard: 3, 5, 8, 11 ---------------------------------------------------------


def test_hf_tensorboard_and_trainer_state_agree() -> None:
    needs("tensorboard")
    root = REAL_RUNS / "hf-t5-summarization-tb"
    tb = only(read_source("tensorboard", [root / "runs"]).runs)
    hf = only(read_source("hf-trainer", [root]).runs)

    assert tb.steps == hf.steps and len(hf.steps) == 431
    for tb_rec, hf_rec in zip(tb.records, hf.records, strict=True):
        for key, value in hf_rec.metrics.items():
            # TensorBoard stores float32: compare at that precision.
            assert struct.pack("<f", value) == struct.pack(
                "<f", tb_rec.metrics[f"train/{key}"]
            )
    assert len(column(tb, "train/loss")) == 430
    # The second event file holds the final eval, at the last step.
    assert tb.records[-1].step == 215337 and "eval/rouge1" in tb.records[-1].metrics
    # HF's TrainingArguments hide in a text summary: they become config.
    assert tb.config["args"]["per_device_train_batch_size"] == 4
    assert "d_model" in tb.config["model_config"]


def test_tensorboard_tf2_tensors_match_mlflow_and_skip_non_scalars() -> None:
    needs("tensorboard")
    root = REAL_RUNS / "mlflow-keras-autolog-tb" / "mlruns"
    tb = only(read_source("tensorboard", [root]).runs)
    mlflow = only(read_source("mlflow", [root]).runs)

    assert tb.steps == list(range(10)) and tb.keys == {"epoch_loss"}
    assert column(tb, "epoch_loss") == column(mlflow, "loss")
    skipped = tb.extra["skipped"]
    assert skipped["graph_def"] == 1
    assert skipped["graph_keras_model (keras)"] == 1
    assert skipped["graph_run_metadata_graph (batch_2)"] == 1


def test_ultralytics_tensorboard_conflicts_are_reported() -> None:
    needs("tensorboard")
    root = REAL_RUNS / "ultralytics-yolov8-fire-smoke"
    last = only(read_source("tensorboard", [root]).runs)
    first = only(read_source("tensorboard", [root], on_conflict="first").runs)
    csv = only(read_source("ultralytics", [root]).runs)

    assert last.stats.rows == 4308 and len(last.records) == 25
    # train/*_loss: ~55 values on each of 25 steps; metrics/*: 2 values at 25.
    per_key: dict[str, int] = {}
    for c in last.conflicts:
        per_key[c.key] = per_key.get(c.key, 0) + 1
    assert per_key == {
        "train/box_loss": 25,
        "train/cls_loss": 25,
        "train/dfl_loss": 25,
        "metrics/mAP50(B)": 1,
        "metrics/mAP50-95(B)": 1,
        "metrics/precision(B)": 1,
        "metrics/recall(B)": 1,
    }
    m = next(c for c in last.conflicts if c.key == "metrics/mAP50(B)")
    assert m.step == 25 and len(m.values) == 2 and m.kept == m.values[-1]
    # TensorBoard counts epochs from 1, the CSV from 0. The CSV kept the first
    # value of the final step; "first" gives it, "last" the best.pt re-run.
    csv_map = column(csv, "metrics/mAP50(B)")[24]
    assert round(column(first, "metrics/mAP50(B)")[25], 5) == csv_map
    assert round(column(last, "metrics/mAP50(B)")[25], 5) == 0.85676
    # The CSV prints 5 digits of the values TensorBoard holds as float32; for
    # the per-batch train losses, the last value of a step is the CSV's.
    for key in ("val/box_loss", "train/box_loss"):
        tb_values = column(last, key)
        for epoch, value in column(csv, key).items():
            assert tb_values[epoch + 1] == pytest.approx(value, rel=1e-4), key
    with pytest.raises(ImportFormatError, match="--on-conflict"):
        read_source("tensorboard", [root], on_conflict="error")


def test_sb3_tensorboard_runs_and_the_aborted_duplicate() -> None:
    needs("tensorboard")
    runs = read_source(
        "tensorboard", [REAL_RUNS / "wandb-sb3-ppo-cartpole" / "logs"]
    ).runs

    by_name = {str(r.name): r for r in runs}
    assert sorted(by_name) == [f"ppo/PPO_{i}" for i in range(1, 7)]
    assert by_name["ppo/PPO_1"].steps == [2048, 4096, 6144, 8192, 10240]
    assert by_name["ppo/PPO_6"].steps == [2048, 4096, 6144, 8192]
    assert min(column(by_name["ppo/PPO_1"], "train/loss")) == 4096

    def without_fps(run: ImportedRun) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.metrics.items() if k != "time/fps"} for r in run.records
        ]

    assert all(without_fps(r) == without_fps(by_name["ppo/PPO_1"]) for r in runs[:5])
    assert without_fps(by_name["ppo/PPO_6"]) == without_fps(by_name["ppo/PPO_1"])[:4]
    # time/fps differs, so PPO_6 is a run of its own, not a snapshot of PPO_1,
    # but it and PPO_2..5 say that they repeat PPO_1.
    assert all(r.fork_of is None for r in runs)
    repeats = {
        name: [n for n in run.notes if "a rerun of it" in n]
        for name, run in by_name.items()
    }
    assert repeats["ppo/PPO_1"] == []
    for name in ("ppo/PPO_2", "ppo/PPO_3", "ppo/PPO_4", "ppo/PPO_5", "ppo/PPO_6"):
        (note,) = repeats[name]
        assert "PPO_1 at every step up to" in note and "except time/fps" in note
    assert "up to 8192 except" in repeats["ppo/PPO_6"][0]


def test_runs_that_share_a_few_values_are_not_called_repeats() -> None:
    from gitruns.importers.model import Record, _same_values

    def records(values: list[dict[str, float]]) -> list[Record]:
        return [Record(i, float(i), v) for i, v in enumerate(values)]

    base = records([{"lr": 0.1, "loss": 1.0 / (i + 1)} for i in range(5)])
    other = records([{"lr": 0.1, "loss": 2.0 / (i + 1)} for i in range(5)])
    assert _same_values(other, base)[0] == 0  # two metrics are too few to tell
    wide = records([{f"m{k}": float(k) for k in range(8)} for _ in range(5)])
    half = records([{f"m{k}": float(k if k < 4 else -k) for k in range(8)}] * 5)
    assert _same_values(half, wide)[0] == 0
    one = records([{f"m{k}": float(k if k else 99) for k in range(8)}] * 5)
    assert _same_values(one, wide) == (5, {"m0"})


# --- CSV presets: 5, 10, 11, 12 -------------------------------------------------------


def test_lightning_rows_of_one_step_merge() -> None:
    runs = read_source("lightning", [REAL_RUNS / "lightning-csvlogger-opal"]).runs

    v0, v1 = sorted(runs, key=lambda r: r.name or "")
    assert (v0.name, v1.name) == ("version_0", "version_1")
    assert v0.stats.rows == 224 and v0.stats.merged == 108 and len(v0.records) == 116
    assert v1.stats.rows == 164
    assert (
        len(column(v0, "val/rmse_loss")) == 8 and len(column(v1, "val/rmse_loss")) == 10
    )
    assert v0.steps[-1] == 5431 and v0.records[-1].metrics.keys() == {
        "epoch",
        "val/rmse_loss",
    }
    assert set(column(v0, "epoch").values()) == set(range(8))
    assert set(column(v1, "epoch").values()) == set(range(10))
    assert "step" not in v0.keys and v0.conflicts == []


def test_keras_csv_with_double_carriage_returns() -> None:
    run = only(read_source("keras", [REAL_RUNS / "keras-csvlogger-mnist"]).runs)

    assert run.steps == list(range(30)) and run.stats.rows == 30
    assert run.keys == {
        "epoch",
        "accuracy",
        "learning_rate",
        "loss",
        "val_accuracy",
        "val_loss",
    }
    assert column(run, "learning_rate")[0] == 0.0010000000474974513
    assert len(set(column(run, "learning_rate").values())) == 3  # halved twice
    assert any("\\r\\r\\n" in n for n in run.notes)


def test_ultralytics_csv_padding_and_args() -> None:
    run = only(
        read_source("ultralytics", [REAL_RUNS / "ultralytics-yolov8-fire-smoke"]).runs
    )

    assert run.steps == list(range(25))
    assert len(run.keys) == 14 and {"epoch", "lr/pg0", "metrics/mAP50(B)"} <= run.keys
    assert all(k == k.strip() for k in run.keys)
    assert len(run.config) == 91
    assert None in run.config.values() and "" in run.config.values()


def test_sb3_monitor_json_header_and_times() -> None:
    run = only(
        read_source("sb3-monitor", [REAL_RUNS / "wandb-sb3-ppo-cartpole" / "logs"]).runs
    )

    assert run.stats.rows == 389 and run.steps == list(range(389))
    assert run.config["env_id"] == "openai_cartpole/ModifiedCartPole-v1"
    first = run.records[0]
    assert first.metrics == {"r": 33.0, "l": 33, "t": 1.206015}
    assert first.timestamp == pytest.approx(1699895683.208566 + 1.206015)


# --- DVCLive: 9 -----------------------------------------------------------------------


def test_dvclive_experiments_and_the_step_metric() -> None:
    runs = read_source("dvclive", [REAL_RUNS / "dvclive-sound-event-detection"]).runs

    master, semi = sorted(runs, key=lambda r: r.name or "")
    assert (master.name, semi.name) == ("master-40ae346", "semi-sup-a6cd0bf")
    assert len(master.keys) == 20 and len(semi.keys) == 42
    assert master.steps[-1] == 5900 and semi.steps[-1] == 11800
    # A metric called "step" hid DVCLive's step column; its steps come from
    # the sibling files of train/: value 40.0 was logged at step 39.
    steps = column(master, "train/step")
    assert len(steps) == 147 and steps[39] == 40.0
    assert column(master, "train/lr").keys() == steps.keys()
    assert len(column(master, "val/weak/macro_F1")) == 100
    assert len(column(semi, "val/obj_metric")) == 200
    # metrics.json is the summary, flattened with "/", and agrees with history.
    for key, value in master.summary.items():
        assert list(column(master, key).values())[-1] == value, key
    assert master.config["training"]["batch_size"] == [24, 24]
    assert master.conflicts == [] and semi.conflicts == []


# --- MLflow: 6, 7, 8 ------------------------------------------------------------------


def test_mlflow_file_store_nesting_and_deleted_runs() -> None:
    root = REAL_RUNS / "mlflow-filestore-nested" / "mlruns"
    active = read_source("mlflow", [root])
    every = read_source("mlflow", [root], include_deleted=True)

    assert len(active.runs) == 13 and len(active.skipped) == 34
    assert any("skipped 34 deleted" in n for n in active.notes)
    assert len(every.runs) == 47 and every.skipped == []
    assert sum(1 for r in every.runs if r.parent) == 33
    assert sorted(r.state for r in every.runs).count("crashed") == 3
    assert sum(len(r.records) for r in every.runs) == 8
    assert all(r.steps in ([], [0]) for r in every.runs)
    # parent -> child -> grandchild
    parent_of = {r.run_id: r.parent for r in every.runs}

    def depth(run_id: str) -> int:
        parent = parent_of.get(run_id)
        return 0 if parent is None else 1 + depth(parent)

    assert max(depth(r) for r in parent_of) == 2
    assert {r.project for r in every.runs} == {"Default"}


def test_mlflow_sqlite_store_read_only() -> None:
    db = REAL_RUNS / "mlflow-sqlite-hyperopt" / "mlflow.db"
    before = db.stat().st_mtime_ns
    runs = read_source("mlflow", [db]).runs

    assert len(runs) == 26 and db.stat().st_mtime_ns == before
    projects: dict[str, int] = {}
    for r in runs:
        projects[r.project or ""] = projects.get(r.project or "", 0) + 1
    assert projects == {"wine-quality": 25, "Check-Localhost-Connector": 1}
    parents = [r for r in runs if r.name == "hyperopt-search"]
    assert len(parents) == 5 and sorted(p.state for p in parents).count("crashed") == 2
    children = [r for r in runs if r.parent]
    assert len(children) == 20
    assert {c.parent for c in children} == {p.run_id for p in parents}
    assert all(c.keys == {"eval_rmse"} for c in children)
    assert all(isinstance(v, str) for c in children for v in c.config.values())
    assert sum(1 for p in parents if "best_eval_rmse" in p.keys) == 3
    # The folder that holds the database finds it too.
    assert len(read_source("mlflow", [db.parent]).runs) == 26


def test_mlflow_keras_params_stay_strings() -> None:
    run = only(
        read_source("mlflow", [REAL_RUNS / "mlflow-keras-autolog-tb" / "mlruns"]).runs
    )

    assert run.config["batch_size"] == "None" and len(run.config) == 21 - 1
    assert run.steps == list(range(10))
    assert any("gitruns import tensorboard" in n for n in run.notes)


# --- W&B: 5, 13 -----------------------------------------------------------------------


def test_wandb_sb3_runs_and_the_torn_log() -> None:
    needs("wandb")
    parsed = read_source("wandb", [REAL_RUNS / "wandb-sb3-ppo-cartpole" / "wandb"])
    runs = {r.run_id: r for r in parsed.runs}

    assert sorted(runs) == ["32lj2b8u", "5milpyx4", "9bpuap22"]
    for run_id in ("9bpuap22", "5milpyx4"):
        run = runs[run_id]
        assert run.steps == list(range(1276)) and len(run.keys) == 52
        assert run.state == "finished" and run.project == "ppo-qlearn-cartpole"
        assert len(column(run, "adversary_reward")) == 1000
        assert len(column(run, "Eval/7/internal_agent_return")) == 10
        assert len(column(run, "Eval/24/episodic_return")) == 1
        assert len(column(run, "ppo_agent_mean_reward_orig")) == 1
    a, b = runs["9bpuap22"], runs["5milpyx4"]
    assert [r.metrics for r in a.records] == [r.metrics for r in b.records]
    assert a.config == b.config
    assert [r.timestamp for r in a.records] != [r.timestamp for r in b.records]

    torn = runs["32lj2b8u"]
    assert torn.steps == list(range(3312)) and torn.state == "crashed"
    assert "121 of its 121 body bytes are missing" in torn.extra["truncated"]
    assert any("no exit, summary, footer record" in n for n in torn.notes)
    # config.yaml's integer keys became strings.
    t = a.extra["_wandb"]["t"]
    assert "1" in t and all(isinstance(k, str) for k in t)


def test_wandb_hf_runs_crashed_and_complete() -> None:
    needs("wandb")
    runs = {
        r.run_id: r
        for r in read_source("wandb", [REAL_RUNS / "wandb-hf-trainer-alpaca"]).runs
    }

    done, crashed = runs["m84hjf9m"], runs["rtjirv0c"]
    assert len(done.records) == 121 and done.exit_code == 0 and done.state == "finished"
    assert len(crashed.records) == 12 and crashed.exit_code == 255
    assert crashed.state == "crashed" and "train/grad_norm" in crashed.keys
    assert "train/grad_norm" not in done.keys
    # _step is W&B's axis; train/global_step, the declared step metric, is kept.
    gs = column(done, "train/global_step")
    assert all(value == step + 1 for step, value in list(gs.items())[:-1])
    assert gs[120] == 120  # the final row (train_runtime, ...) repeats it
    assert {"name": "*", "step_metric": "train/global_step"} in done.metric_defs
    assert len(done.config) == 188 - 2 and len(crashed.config) == 197 - 2
    assert "fsdp_config" in crashed.config
    # The summary keeps the last train/loss, though the last row lacks it.
    assert "train/loss" not in done.records[-1].metrics
    assert done.summary["train/loss"] == list(column(done, "train/loss").values())[-1]


def test_wandb_missing_package_says_how_to_get_it(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['wandb'] = None\n"
        "from gitruns.errors import MissingExtraError\n"
        "from gitruns.importers import read_source\n"
        "try:\n"
        f"    read_source('wandb', [{str(REAL_RUNS / 'wandb-hf-trainer-alpaca')!r}])\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "pip install 'gitruns[wandb]'" in done.stdout


def _frame(records: list[bytes]) -> bytes:
    """A .wandb file's framing around ``records`` (the test's own writer)."""
    out = bytearray(FILE_HEADER)
    for body in records:
        first = True
        while True:
            room = BLOCK - len(out) % BLOCK
            if room < 7:
                out += b"\0" * room
                continue
            piece, body = body[: room - 7], body[room - 7 :]
            kind = (1 if first else 4) if not body else (2 if first else 3)
            crc = zlib.crc32(bytes([kind]) + piece) & 0xFFFFFFFF
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not body:
                break
    return bytes(out)


def test_wandb_framing_spans_blocks_and_stops_at_damage() -> None:
    big = bytes(range(256)) * 300  # 76,800 bytes: FIRST, MIDDLE, LAST
    data = _frame([b"a", big, b"b"])

    assert scan(data, "x").records == [b"a", big, b"b"]
    assert scan(data, "x").problem is None
    cut = scan(data[: len(data) - 1], "x")
    assert cut.records == [b"a", big] and "missing" in (cut.problem or "")
    flipped = bytearray(data)
    flipped[len(FILE_HEADER) + 7] ^= 0xFF  # the first record's body
    bad = scan(bytes(flipped), "x")
    assert bad.records == [] and "checksum" in (bad.problem or "")
    with pytest.raises(ImportFormatError, match="not a W&B"):
        scan(b"PK\x03\x04", "x")


# --- rules on synthetic logs ----------------------------------------------------------


def test_wandb_copies_of_one_run_are_imported_once(tmp_path: Path) -> None:
    needs("wandb")
    torn = (
        REAL_RUNS
        / "wandb-sb3-ppo-cartpole"
        / "wandb"
        / "latest-run"
        / "run-32lj2b8u.wandb"
    )
    data = torn.read_bytes()
    for folder, size in (("early", len(data) // 2), ("late", len(data))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run-32lj2b8u.wandb").write_bytes(data[:size])
    parsed = read_source("wandb", [tmp_path])

    run = only(parsed.runs)
    assert run.path.endswith("late/run-32lj2b8u.wandb") and len(run.records) == 3312
    (snapshot,) = parsed.skipped
    assert "early" in snapshot.path and "snapshot" in snapshot.reason


def test_tensorboard_session_that_goes_back_is_a_fork(tmp_path: Path) -> None:
    needs("tensorboard")
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path / "run"))
    for when, (step, loss) in enumerate(
        [(0, 1.0), (10, 0.5), (20, 0.25), (10, 0.4), (30, 0.1)]
    ):
        value = Summary.Value(tag="loss", simple_value=loss)
        writer.add_event(
            Event(wall_time=1000.0 + when, step=step, summary=Summary(value=[value]))
        )
    writer.close()
    root, fork = read_source("tensorboard", [tmp_path]).runs

    assert root.steps == [0, 10, 20] and root.fork_of is None
    assert fork.fork_of == (root.run_id, 0) and column(fork, "loss") == {
        10: 0.4000000059604645,
        30: 0.10000000149011612,
    }
    assert root.records[1].timestamp == 1001.0


def _keras(path: Path, rows: list[tuple[int, float]]) -> Path:
    path.write_text("epoch,loss\n" + "".join(f"{e},{v}\n" for e, v in rows))
    return path


def test_steps_that_go_back_become_forks(tmp_path: Path) -> None:
    log = _keras(
        tmp_path / "log.csv",
        [
            (0, 1.0),
            (1, 0.9),
            (2, 0.8),
            (3, 0.7),
            (2, 0.75),
            (3, 0.65),
            (4, 0.6),
            (0, 2.0),
        ],
    )
    runs = read_source("keras", [log]).runs

    root, fork, again = runs
    assert root.steps == [0, 1, 2, 3] and root.fork_of is None
    assert fork.fork_of == (root.run_id, 1) and fork.steps == [2, 3, 4]
    assert again.fork_of is None and again.steps == [0]  # below every step
    assert len({root.run_id, fork.run_id, again.run_id}) == 3


def test_values_gitruns_cannot_store(tmp_path: Path) -> None:
    state = {
        "log_history": [
            {"step": 1, "big": 2**64, "top": INT64_MAX, "nan": math.nan, "ok": "x"},
            {"step": 1, "list": [1, 2], "_private": 1, "ünï/cødé": -math.inf},
        ]
    }
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    run = only(read_source("hf-trainer", [tmp_path]).runs)

    (rec,) = run.records
    assert rec.metrics["big"] == str(2**64) and rec.metrics["top"] == INT64_MAX
    assert math.isnan(rec.metrics["nan"]) and rec.metrics["ünï/cødé"] == -math.inf
    assert "list" not in rec.metrics and "_private" not in rec.metrics
    assert run.stats.dropped_values == 2
    assert any("kept as text" in n for n in run.notes)


def test_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ImportFormatError, match="no 'step' column"):
        read_source("lightning", [tmp_path])
    with pytest.raises(ImportFormatError, match="no such file"):
        read_source("keras", [tmp_path / "missing"])
    with pytest.raises(ImportFormatError, match="unknown format"):
        read_source("csv-of-dreams", [tmp_path])
    (tmp_path / "trainer_log.jsonl").write_text('{"current_steps": -1, "loss": 1}\n')
    with pytest.raises(ImportFormatError, match="negative step"):
        read_source("llamafactory", [tmp_path])


# --- writing to Git -------------------------------------------------------------------


def test_import_writes_runs_and_reimport_writes_nothing(repo: Path) -> None:
    source = REAL_RUNS / "hf-whisper-large-v2-ja"
    first = import_runs("hf-trainer", [source], repo=repo)

    (outcome,) = first.outcomes
    assert outcome.status == "imported" and len(first.skipped) == 5
    view = gitruns.Api(repo=repo).run(outcome.path)
    rows = history(view)
    assert len(rows) == 200 and rows[-1]["_step"] == 5000
    assert rows[-1]["eval_wer"] == 0.7449365679946583
    assert (
        view.state == "finished" and view.summary["best_metric"] == 0.7431560204762965
    )
    assert view.source is not None and view.source["format"] == "hf-trainer"
    assert view.source["rows"] == 206
    tips = git("for-each-ref", "refs/heads/runs", cwd=repo)

    again = import_runs("hf-trainer", [source], repo=repo)
    assert [o.status for o in again.outcomes] == ["exists"]
    assert git("for-each-ref", "refs/heads/runs", cwd=repo) == tips
    git("fsck", "--strict", cwd=repo)


def test_progress_counts_every_row(repo: Path) -> None:
    ticks: list[int] = []
    source = REAL_RUNS / "hf-whisper-tiny-nb-resumed"
    import_runs("hf-trainer", [source], repo=repo, progress=ticks.append)
    assert sum(ticks) == 2000 and len(ticks) > 1

    ticks.clear()
    import_runs("hf-trainer", [source], repo=repo, progress=ticks.append)
    assert sum(ticks) == 2000  # nothing written, but the bar still completes


def test_restart_forks_are_written_as_forks(tmp_path: Path, repo: Path) -> None:
    log = _keras(
        tmp_path / "log.csv", [(0, 1.0), (1, 0.9), (2, 0.8), (1, 0.85), (2, 0.7)]
    )
    report = import_runs("keras", [log], repo=repo, project="p")

    root, fork = (gitruns.Api(repo=repo).run(o.path) for o in report.outcomes)
    assert fork.fork_from is not None
    assert fork.fork_from["run"] == root.path and fork.fork_from["step"] == 0
    assert [(r["_step"], r["loss"]) for r in history(fork)] == [
        (0, 1.0),
        (1, 0.85),
        (2, 0.7),
    ]
    assert [r["loss"] for r in history(root)] == [1.0, 0.9, 0.8]


def test_identical_wandb_runs_import_to_identical_histories(repo: Path) -> None:
    needs("wandb")
    wandb_dir = REAL_RUNS / "wandb-sb3-ppo-cartpole" / "wandb"
    report = import_runs(
        "wandb",
        [
            wandb_dir / "run-20231211_132319-9bpuap22",
            wandb_dir / "run-20231211_140152-5milpyx4",
        ],
        repo=repo,
    )

    assert [o.path for o in report.outcomes] == [
        "ppo-qlearn-cartpole/9bpuap22",
        "ppo-qlearn-cartpole/5milpyx4",
    ]
    a, b = (gitruns.Api(repo=repo).run(o.path) for o in report.outcomes)
    assert history(a) == history(b) and len(history(a)) == 1276
    assert a.config == b.config
    assert a.source and a.source["wandb_run_id"] == "9bpuap22"


def test_mlflow_parents_are_recorded_not_forked(repo: Path) -> None:
    db = REAL_RUNS / "mlflow-sqlite-hyperopt" / "mlflow.db"
    report = import_runs("mlflow", [db], repo=repo)

    assert report.count("imported") == 26
    api = gitruns.Api(repo=repo)
    child = api.run("wine-quality/4eb6539fcb8348b2aaccfac3f593b782")
    assert child.fork_from is None
    assert (
        child.source
        and child.source["parent"] == "wine-quality/b7413a71c2124bd5b12b4d3434e3cc72"
    )
    # The search's runs are one group, as W&B would show them.
    group = api.runs(
        "wine-quality",
        filters={"group": "wine-quality/b7413a71c2124bd5b12b4d3434e3cc72"},
    )
    assert child.path in [r.path for r in group] and len(group) == 4
    assert child.config == {
        "lr": "0.0027079582805361337",
        "momentum": "0.887476166957799",
    }
    failed = api.run("wine-quality/3c193b6cd69e41f982bd0f116058904a")
    assert failed.state == "crashed"


def test_int_beyond_int64_is_stored_as_text(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"log_history": [{"step": 0, "n": 2**64, "m": INT64_MAX}]})
    )
    (outcome,) = import_runs("hf-trainer", [tmp_path], repo=repo).outcomes
    (row,) = history(gitruns.Api(repo=repo).run(outcome.path))

    assert row["n"] == "18446744073709551616" and row["m"] == INT64_MAX


def test_id_taken_by_another_source_is_not_overwritten(
    tmp_path: Path, repo: Path
) -> None:
    first = tmp_path / "a" / "trainer_state.json"
    first.parent.mkdir()
    first.write_text(json.dumps({"log_history": [{"step": 0, "loss": 1.0}]}))
    (outcome,) = import_runs("hf-trainer", [first], repo=repo).outcomes
    project, run_id = outcome.path.split("/")
    gitruns.init(project="other", id=run_id, repo=repo).finish()
    theirs = gitruns.Api(repo=repo).run(f"other/{run_id}").tip

    (clash,) = import_runs("hf-trainer", [first], repo=repo, project="other").outcomes
    assert clash.status == "clash" and "another --project" in clash.message
    assert gitruns.Api(repo=repo).run(f"other/{run_id}").tip == theirs


# --- the command ----------------------------------------------------------------------


def _cli(*args: str) -> Any:
    group = GitRunsGroup()
    group.add_command(import_command)
    return CliRunner().invoke(group, ["import", *args])


def test_cli_import_then_again_then_dry_run(repo: Path) -> None:
    source = str(REAL_RUNS / "lightning-csvlogger-opal")
    done = _cli("lightning", source, "--repo", str(repo), "-p", "opal")
    assert done.exit_code == 0, done.output
    assert done.output.count("imported ") == 2 and "2 imported" in done.output

    again = _cli("lightning", source, "--repo", str(repo), "-p", "opal")
    assert again.exit_code == 0 and "0 imported, 2 already imported" in again.output

    dry = _cli(
        "keras",
        str(REAL_RUNS / "keras-csvlogger-mnist"),
        "--repo",
        str(repo),
        "-n",
        "--json",
    )
    assert dry.exit_code == 0
    (run,) = json.loads(dry.output)["runs"]
    assert run["status"] == "dry-run" and run["steps"] == 30
    assert len(gitruns.Api(repo=repo).runs()) == 2


def test_cli_import_into_a_pipe_prints_no_progress_bar(
    repo: Path, tmp_path: Path
) -> None:
    # Enough rows for a bar on a terminal; in a pipe, click would print its
    # label alone.
    history = [{"step": i, "loss": 1 / (i + 1)} for i in range(6000)]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": history, "global_step": 6000}))
    done = subprocess.run(
        [sys.executable, "-c", "from gitruns.cli import main; main()", "import"]
        + ["hf-trainer", str(state), "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "importing" not in done.stderr and "1 imported" in done.stderr


def test_cli_errors_exit_with_the_import_code(repo: Path, tmp_path: Path) -> None:
    done = _cli("keras", str(tmp_path / "nothing-here"), "--repo", str(repo))
    assert done.exit_code == ImportFormatError.exit_code == 8
    assert "no such file" in done.output
    assert _cli("--help").output.count("sb3-monitor") == 1


# --- gitruns' own exports -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("", None),
        ("0", 0),
        ("-12", -12),
        ("9223372036854775807", INT64_MAX),
        ("9223372036854775808", "9223372036854775808"),  # beyond int64: text
        ("0.1", 0.1),
        ("-0.0", -0.0),
        ("5e-324", 5e-324),
        ("1.7976931348623157e+308", 1.7976931348623157e308),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("True", True),
        ("False", False),
        ("true", "true"),
        (" 1", " 1"),
        ("1_000", "1_000"),
        ("0x1f", "0x1f"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_gitruns_csv_cells_are_typed_one_by_one(cell: str, value: Any) -> None:
    got = read_cell(cell)
    assert type(got) is type(value)
    if isinstance(value, float):
        assert struct.pack("<d", got) == struct.pack("<d", value)
    else:
        assert got == value


def test_gitruns_csv_nan_and_every_column_typed_per_cell(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    # A BOM and \r\n endings (a spreadsheet saved it), a blank line, a quoted
    # cell with a line break, and a column gitruns refuses as a metric name.
    path.write_bytes(
        "\ufeff_step,_timestamp,loss,note,_hidden\r\n"
        "0,1700000000.25,1,,x\r\n"
        "\r\n"
        '1,1700000001.5,nan,"two\r\nlines",y\r\n'
        "2,,0.5,True,z\r\n".encode()
    )
    run = only(read_source("gitruns-csv", [path]).runs)

    assert run.steps == [0, 1, 2] and run.name == "run"
    assert [r.timestamp for r in run.records] == [1700000000.25, 1700000001.5, None]
    loss = column(run, "loss")
    assert type(loss[0]) is int and math.isnan(loss[1]) and loss[2] == 0.5
    assert column(run, "note") == {1: "two\r\nlines", 2: True}
    assert "_hidden" not in run.keys
    assert any("'_hidden'" in note for note in run.notes)


def test_gitruns_jsonl_keeps_types_and_python_spellings(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(
        '{"_step":0,"_timestamp":1700000000.5,"a":NaN,"b":Infinity,"c":-Infinity}\n'
        '{"_step":1,"_timestamp":1700000001,"a":1,"b":1.0,"c":null,"d":true}\n'
        '{"_step":2,"a":-0.0,"big":18446744073709551616,"deep":{"x":1},'
        '"s":"one\u2028line"}\n',
        encoding="utf-8",
    )
    run = only(read_source("gitruns-jsonl", [path]).runs)

    first, second, third = (r.metrics for r in run.records)
    assert math.isnan(first["a"]) and first["b"] == math.inf and first["c"] == -math.inf
    assert [type(second[k]) for k in "abcd"] == [int, float, type(None), bool]
    assert math.copysign(1, third["a"]) == -1
    assert third["big"] == "18446744073709551616" and third["s"] == "one\u2028line"
    assert "deep" not in third and any("deep (dict)" in n for n in run.notes)
    assert [r.timestamp for r in run.records] == [1700000000.5, 1700000001.0, None]
    assert type(run.records[1].timestamp) is float


def test_gitruns_export_whose_steps_go_back_is_a_run_and_a_fork(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.jsonl"
    rows = [(0, 1.0), (1, 0.9), (2, 0.8), (2, 0.7), (1, 0.95), (2, 0.85)]
    path.write_text("".join(f'{{"_step":{s},"loss":{v}}}\n' for s, v in rows))
    root, fork = read_source("gitruns-jsonl", [path]).runs

    # Two rows of step 2 merge (the later value wins and is reported).
    assert column(root, "loss") == {0: 1.0, 1: 0.9, 2: 0.7}
    assert [(c.step, c.values) for c in root.conflicts] == [(2, (0.8, 0.7))]
    assert fork.fork_of == (root.run_id, 0)
    assert column(fork, "loss") == {1: 0.95, 2: 0.85}


def test_gitruns_exports_in_a_folder_skip_other_files(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text("_step,_timestamp,loss\n0,1.5,0.25\n")
    (tmp_path / "keras.csv").write_text("epoch,loss\n0,0.25\n")
    (tmp_path / "mine.jsonl").write_text('{"_step":0,"loss":0.25}\n')
    (tmp_path / "other.jsonl").write_text('{"step":0,"loss":0.25}\n')

    csv_source = read_source("gitruns-csv", [tmp_path])
    assert [Path(r.path).name for r in csv_source.runs] == ["mine.csv"]
    assert [(Path(s.path).name, s.reason) for s in csv_source.skipped] == [
        ("keras.csv", "not a gitruns export (no _step column)")
    ]
    jsonl_source = read_source("gitruns-jsonl", [tmp_path])
    assert [Path(r.path).name for r in jsonl_source.runs] == ["mine.jsonl"]
    assert [Path(s.path).name for s in jsonl_source.skipped] == ["other.jsonl"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "keras.csv",
            "epoch,loss\n0,1\n",
            "no _step column; is this a gitruns export?",
        ),
        ("short.csv", "_step,loss\n0,1\n1\n", "line 3 has 1 cells, the header 2"),
        ("twice.csv", "_step,loss,loss\n0,1,2\n", "names 'loss' twice"),
        ("half.csv", "_step,loss\n0.5,1\n", "row 2 has 0.5 in step column '_step'"),
        ("time.csv", "_step,_timestamp\n0,noon\n", "line 2 has _timestamp='noon'"),
        ("torn.jsonl", '{"_step":0}\n{"_step":1,"lo', "line 2 is not JSON"),
        ("list.jsonl", '{"_step":0}\n[1]\n', "line 2 is not an object with _step"),
        ("bool.jsonl", '{"_step":true}\n', "True in step column '_step'"),
        ("other.jsonl", '{"step":0}\n', "line 1 has no _step; is this a gitruns"),
    ],
)
def test_gitruns_export_errors_name_the_line_and_the_fix(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    fmt = "gitruns-csv" if name.endswith(".csv") else "gitruns-jsonl"
    with pytest.raises(ImportFormatError, match=re.escape(message)):
        read_source(fmt, [path])


def test_cli_imports_a_gitruns_export(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    path.write_text("_step,_timestamp,loss\n0,1700000000.5,1\n5,1700000002.0,0.5\n")
    done = _cli("gitruns-csv", str(path), "--repo", str(repo))
    assert done.exit_code == 0, done.output
    assert "1 imported" in done.output

    (view,) = gitruns.Api(repo=repo).runs()
    assert view.project == "imported" and view.name == "run"
    assert list(view.scan_history()) == [
        {"_step": 0, "_timestamp": 1700000000.5, "loss": 1},
        {"_step": 5, "_timestamp": 1700000002.0, "loss": 0.5},
    ]
    assert view.source is not None and view.source["format"] == "gitruns-csv"
    again = _cli("gitruns-csv", str(path), "--repo", str(repo))
    assert "0 imported, 1 already imported" in again.output

    keras = str(REAL_RUNS / "keras-csvlogger-mnist" / "training_log.csv")
    refused = _cli("gitruns-csv", keras, "--repo", str(repo))
    assert refused.exit_code == ImportFormatError.exit_code
    help_text = _cli("--help").output
    assert "gitruns-csv" in help_text and "gitruns-jsonl" in help_text


def test_sparse_tensorboard_steps_fit_a_window(repo: Path) -> None:
    # SB3 logs every 2048 steps: a window of ~1000 rows would exceed a chunk's
    # row limit if the run were dense, so it is capped, and the import works.
    from click.testing import CliRunner

    from gitruns.cli import main

    source = REAL_RUNS / "wandb-sb3-ppo-cartpole" / "logs" / "ppo" / "PPO_1"
    result = CliRunner().invoke(
        main, ["import", "tensorboard", str(source), "--repo", str(repo)]
    )
    assert result.exit_code == 0, result.output
    (view,) = gitruns.Api(repo).runs()
    assert view.info["window"] <= 1_000_000
    assert view.last_step == 10240


def test_importing_inside_a_training_script_keeps_its_current_run(
    repo: Path,
) -> None:
    from gitruns.importers import import_runs

    run = gitruns.init(project="train", id="live", repo=repo)
    import_runs("hf-trainer", [REAL_RUNS / "hf-whisper-large-v2-ja"], repo=repo)
    assert gitruns.run is run
    gitruns.log({"loss": 0.5})
    run.finish()
    assert [r["loss"] for r in gitruns.Api(repo).run("train/live").scan_history()] == [
        0.5
    ]
