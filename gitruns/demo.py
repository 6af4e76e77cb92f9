"""The main job: train a real classifier, log it, fork it with another learning rate.

A one-hidden-layer network learns scikit-learn's bundled digits (1,797 real
8x8 scans of handwritten digits, shipped inside the package: no network) by
mini-batch SGD in numpy. Each step logs the training loss; every few steps
the held-out accuracy is logged as well. The run is then forked at a step
with a different learning rate, from the weights it had at that step, and
both runs are compared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import gitruns
from gitruns.errors import require
from gitruns.run import Run

logger = logging.getLogger(__name__)


@dataclass
class Data:
    """Train and test splits of the digits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0) -> Data:
    """The digits, scaled to [0, 1] and split 80/20."""
    datasets = require("sklearn.datasets", "demo", "the demo's data set")
    digits = datasets.load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return Data(x[train], y[train], x[test], y[test])


class Network:
    """A 64-32-10 multilayer perceptron trained by plain SGD."""

    def __init__(self, seed: int = 0, hidden: int = 32) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, 1 / 8, (64, hidden))
        self.b1 = np.zeros(hidden)
        self.w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, 10))
        self.b2 = np.zeros(10)

    def copy(self) -> Network:
        """A checkpoint of the weights."""
        other = Network.__new__(Network)
        other.w1, other.b1 = self.w1.copy(), self.b1.copy()
        other.w2, other.b2 = self.w2.copy(), self.b2.copy()
        return other

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ self.w1 + self.b1)
        logits = h @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return h, p / p.sum(axis=1, keepdims=True)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on a batch; returns the batch's cross-entropy."""
        h, p = self._forward(x)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        grad = p
        grad[np.arange(len(y)), y] -= 1
        grad /= len(y)
        dh = (grad @ self.w2.T) * (1 - h**2)
        self.w2 -= lr * h.T @ grad
        self.b2 -= lr * grad.sum(axis=0)
        self.w1 -= lr * x.T @ dh
        self.b1 -= lr * dh.sum(axis=0)
        return loss

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Share of correct predictions."""
        return float((self._forward(x)[1].argmax(axis=1) == y).mean())


def train(
    run: Run,
    net: Network,
    data: Data,
    steps: range,
    batch: int,
    eval_every: int,
    on_step: Callable[[int, Network], None] | None = None,
) -> None:
    """Train ``net`` for ``steps``, logging to ``run``."""
    lr = float(run.config["lr"])
    for step in steps:
        # Batches depend on the step alone, so a fork sees the batches its
        # source saw: the runs differ by their config, not by chance.
        rng = np.random.default_rng([run.config["seed"], step])
        pick = rng.integers(0, len(data.x_train), batch)
        loss = net.step(data.x_train[pick], data.y_train[pick], lr)
        row: dict[str, Any] = {
            "train/loss": loss,
            "epoch": step * batch // len(data.x_train),  # epochs completed
        }
        if step % eval_every == 0 or step == steps.stop - 1:
            row["eval/accuracy"] = net.accuracy(data.x_test, data.y_test)
        run.log(row, step=step)
        if on_step is not None:
            on_step(step, net)


def run_demo(
    repo: str | os.PathLike[str] | None = None,
    steps: int = 600,
    fork_at: int = 300,
    lr: float = 0.05,
    fork_lr: float = 0.5,
    echo: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Train a base run, fork it at ``fork_at`` with ``fork_lr``; return both paths.

    Args:
        repo: the repository of the runs (resolved as ``gitruns.init`` does).
        steps: training steps of the base run.
        fork_at: the step the fork branches after.
        lr: learning rate of the base run.
        fork_lr: learning rate of the fork.
        echo: where the progress lines go (the CLI passes ``click.echo``);
            by default they are logged at INFO by this module's logger.

    Returns:
        The paths (``project/run_id``) of the base run and of the fork.

    Raises:
        GitRunsError: if a run cannot be created, logged or finished.
    """
    say = echo if echo is not None else logger.info
    data = load_digits_split()
    config = {"lr": lr, "batch": 32, "hidden": 32, "seed": 0, "model": "mlp-64-32-10"}
    checkpoints: dict[int, Network] = {}

    def keep(step: int, net: Network) -> None:
        if step == fork_at:
            checkpoints[step] = net.copy()

    base = gitruns.init(project="digits", name=f"mlp lr={lr}", config=config, repo=repo)
    # Accuracy against epochs too; also makes `gitruns fork RUN --step epoch=3` work.
    base.define_metric("eval/accuracy", step_metric="epoch")
    say(f"training {base.path} (lr={lr}) for {steps} steps on sklearn digits ...")
    train(base, Network(0), data, range(steps), 32, 20, keep)
    base.finish()

    fork = gitruns.init(
        project="digits",
        name=f"mlp lr={fork_lr} from step {fork_at}",
        fork_from=f"{base.path}?_step={fork_at}",
        config={"lr": fork_lr},
        repo=repo,
    )
    say(f"forked {base.path} at step {fork_at} into {fork.path} (lr={fork_lr}) ...")
    train(fork, checkpoints[fork_at], data, range(fork_at + 1, steps), 32, 20)
    fork.finish()
    return base.path, fork.path
