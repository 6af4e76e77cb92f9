"""The peers gitruns is measured against: W&B offline, tensorboardX, MLflow."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from common import MissingTool, Result, Workload, time_calls, tree_bytes


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingTool(f"{module} is not installed ({exc})") from None


def _version(module: ModuleType) -> str:
    return str(getattr(module, "__version__", "?"))


def _measure(
    params: dict[str, Any],
    start: Callable[[], Callable[[int, dict[str, float]], object]],
    close: Callable[[], object],
    data_dir: Path,
    version: str,
) -> Result:
    """Time ``start()``, the log loop and ``close()``; size ``data_dir``."""
    work = Workload.from_params(params)
    calls = work.calls()

    t0 = time.perf_counter()
    log = start()
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop_s, latency = time_calls(calls, log, params["latency"])
    close()
    total = time.perf_counter() - t0

    size = tree_bytes(data_dir)
    return {
        "version": version,
        "seconds": total,
        "loop_seconds": loop_s,
        "init_seconds": init_s,
        "calls": len(calls),
        "points": work.points,
        "latency": latency,
        "storage": {
            "bytes": size["bytes"],
            "allocated": size["allocated"],
            "files": size["files"],
            "bytes_per_point": size["bytes"] / work.points,
        },
    }


def log_wandb(params: dict[str, Any], workdir: Path) -> Result:
    """W&B in offline mode: ``wandb.init``, ``run.log`` per step, ``finish``."""
    root = workdir / "wandb-root"
    root.mkdir()
    # Keep W&B's config, cache and data inside the case's scratch directory.
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(root),
        WANDB_CONFIG_DIR=str(root / "config"),
        WANDB_CACHE_DIR=str(root / "cache"),
        WANDB_DATA_DIR=str(root / "data"),
    )
    wandb = _require("wandb")
    handle: dict[str, Any] = {}

    def start() -> Callable[[int, dict[str, float]], object]:
        run = wandb.init(project="bench", dir=str(root), config={"bench": True})
        handle["run"] = run

        def log(step: int, metrics: dict[str, float]) -> None:
            run.log(metrics, step=step)

        return log

    def close() -> None:
        handle["run"].finish()

    return _measure(params, start, close, root / "wandb", _version(wandb))


def log_tensorboardx(params: dict[str, Any], workdir: Path) -> Result:
    """tensorboardX: one ``add_scalar`` per point, then ``close``."""
    tbx = _require("tensorboardX")
    logdir = workdir / "tb"
    handle: dict[str, Any] = {}

    def start() -> Callable[[int, dict[str, float]], object]:
        writer = tbx.SummaryWriter(logdir=str(logdir))
        handle["writer"] = writer
        add = writer.add_scalar

        def log(step: int, metrics: dict[str, float]) -> None:
            for key, value in metrics.items():
                add(key, value, global_step=step)

        return log

    def close() -> None:
        handle["writer"].close()

    return _measure(params, start, close, logdir, _version(tbx))


def log_mlflow(params: dict[str, Any], workdir: Path) -> Result:
    """MLflow's file store: ``log_metrics`` per step inside one run."""
    # MLflow 3 refuses the file store unless asked; the issue names that store.
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow = _require("mlflow")
    store = workdir / "mlruns"

    def start() -> Callable[[int, dict[str, float]], object]:
        mlflow.set_tracking_uri(f"file:{store}")
        mlflow.start_run()
        log_metrics = mlflow.log_metrics

        def log(step: int, metrics: dict[str, float]) -> None:
            log_metrics(metrics, step=step)

        return log

    return _measure(params, start, mlflow.end_run, store, _version(mlflow))
