"""A sweep: processes write runs, and forks of one source, into one repository at once.

Usage::

    python bench/sweep.py [--runs 10] [--forks 3] [--steps 2000] [--json FILE]

A shared source run is written first. Then ``--runs`` processes each write a
run of their own and ``--forks`` processes each fork the source at a step of
their own and log on, all started together and committing small windows
often, so that their commits, object writes, ref updates and final packs
overlap. Afterwards every run must hold exactly the steps and values its
process logged (a fork: the source's steps up to its fork step, then its
own), the source must be unchanged, no process may have failed, and
``git fsck --strict`` must be clean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = "sweep"
SOURCE = "source"
SOURCE_STEPS = 300
WINDOW = 64

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def value(run: str, step: int) -> float:
    """What ``run`` logs as ``loss`` at ``step``: known to the checker too."""
    return math.sin(step / 7.0) + len(run) + step * 1e-3


def writer(repo: str, run_id: str, steps: int, fork_at: int, start_at: float) -> None:
    """One process of the sweep: write a run (or a fork) and print its timings."""
    import gitruns

    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    if fork_at >= 0:
        run = gitruns.init(
            project=PROJECT,
            id=run_id,
            repo=repo,
            fork_from=f"{PROJECT}/{SOURCE}?_step={fork_at}",
            save_code=False,
            flush_interval=0.05,
        )
        first = fork_at + 1
    else:
        run = gitruns.init(
            project=PROJECT,
            id=run_id,
            repo=repo,
            config={"lr": 0.1},
            save_code=False,
            window=WINDOW,
            flush_interval=0.05,
        )
        first = 0
    t1 = time.perf_counter()
    for step in range(first, first + steps):
        run.log({"loss": value(run_id, step), "step_int": step}, step=step)
    t2 = time.perf_counter()
    run.finish()
    t3 = time.perf_counter()
    print(
        json.dumps({"run": run_id, "init": t1 - t0, "log": t2 - t1, "finish": t3 - t2})
    )


@dataclass
class Outcome:
    """What the sweep measured and found."""

    processes: int = 0
    failed: list[str] = field(default_factory=list)
    steps_checked: int = 0
    steps_wrong: int = 0
    missing_runs: list[str] = field(default_factory=list)
    fsck: str | None = None
    wall_seconds: float = 0.0
    timings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every run and step is there and nothing failed."""
        return not (self.failed or self.steps_wrong or self.missing_runs or self.fsck)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""

        def spread(key: str) -> dict[str, float]:
            values = [t[key] for t in self.timings] or [0.0]
            return {
                "min": round(min(values), 3),
                "median": round(statistics.median(values), 3),
                "max": round(max(values), 3),
            }

        return {
            "processes": self.processes,
            "failed": self.failed,
            "missing_runs": self.missing_runs,
            "steps_checked": self.steps_checked,
            "steps_wrong": self.steps_wrong,
            "fsck": self.fsck or "clean",
            "wall_seconds": round(self.wall_seconds, 2),
            "init_seconds": spread("init"),
            "log_seconds": spread("log"),
            "finish_seconds": spread("finish"),
        }


def _write_source(repo: Path) -> None:
    import gitruns

    source = gitruns.init(
        project=PROJECT, id=SOURCE, repo=str(repo), save_code=False, window=WINDOW
    )
    for step in range(SOURCE_STEPS):
        source.log({"loss": value(SOURCE, step), "step_int": step})
    source.finish()


def _expected(run_id: str, steps: int, fork_at: int) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    if fork_at >= 0:
        for step in range(fork_at + 1):
            rows[step] = {"loss": value(SOURCE, step), "step_int": step}
        first = fork_at + 1
    else:
        first = 0
    for step in range(first, first + steps):
        rows[step] = {"loss": value(run_id, step), "step_int": step}
    return rows


def fsck(repo: Path) -> str | None:
    """None if ``git fsck --strict`` is clean, else what it said."""
    done = subprocess.run(
        ["git", "--git-dir", str(repo), "fsck", "--strict", "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, **_GIT_ENV},
        check=False,
    )
    bad = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if not line.startswith(("dangling ", "notice: "))
    ]
    if done.returncode or bad:
        return f"rc={done.returncode}: " + "; ".join(bad[:5])
    return None


def sweep(workdir: Path, runs: int = 10, forks: int = 3, steps: int = 2000) -> Outcome:
    """Run the sweep in ``workdir`` and check the repository it leaves."""
    from gitruns.reader import RunView
    from gitruns.refs import RunRef
    from gitruns.store import RunStore

    repo = workdir / "runs.git"
    _write_source(repo)
    plan = [(f"run{i:02d}", steps, -1) for i in range(runs)]
    plan += [
        (f"fork{i:02d}", steps // 4, (i + 1) * SOURCE_STEPS // (forks + 1))
        for i in range(forks)
    ]

    outcome = Outcome(processes=len(plan))
    start_at = time.time() + 1.0 + 0.05 * len(plan)
    me = str(Path(__file__).resolve())
    children = [
        (
            run_id,
            subprocess.Popen(
                [sys.executable, me, "writer", str(repo), run_id, str(n), str(at)]
                + [repr(start_at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for run_id, n, at in plan
    ]
    for run_id, child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            outcome.failed.append(f"{run_id}: exit {child.returncode}: {last}")
        else:
            outcome.timings.append(json.loads(out.strip().splitlines()[-1]))
    # From the common start to the last process's exit.
    outcome.wall_seconds = time.time() - start_at

    store = RunStore.open(repo, create=False)
    try:
        checks = [(SOURCE, _expected(SOURCE, 0, SOURCE_STEPS - 1))]
        checks += [(run_id, _expected(run_id, n, at)) for run_id, n, at in plan]
        for run_id, rows in checks:
            ref = RunRef(PROJECT, run_id)
            if store.tip(ref) is None:
                outcome.missing_runs.append(run_id)
                continue
            got = {row.pop("_step"): row for row in RunView(store, ref).scan_history()}
            for step, want in rows.items():
                outcome.steps_checked += 1
                have = got.get(step, {})
                if any(have.get(k) != v for k, v in want.items()):
                    outcome.steps_wrong += 1
            outcome.steps_wrong += len(set(got) - set(rows))
    finally:
        store.close()
    outcome.fsck = fsck(repo)
    return outcome


def main() -> None:
    """Parse the command line and run the sweep (or one of its writers)."""
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        repo, run_id, steps, fork_at, start_at = sys.argv[2:7]
        writer(repo, run_id, int(steps), int(fork_at), float(start_at))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--forks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitruns-sweep-") as tmp:
        outcome = sweep(args.workdir or Path(tmp), args.runs, args.forks, args.steps)
    result = outcome.as_dict()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if outcome.ok else 1)


if __name__ == "__main__":
    main()
