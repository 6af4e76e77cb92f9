"""Time pushing a 100,000-step run to a loopback ``git daemon``, and what a hook costs.

    python bench/push.py                   # 100k steps x 10 metrics, 3 repeats
    python bench/push.py --steps 20000 --repeat 1

Figures (medians of the repeats), each into a fresh bare repository served by
a real ``git daemon --enable=receive-pack`` on 127.0.0.1:

- ``gitruns push``: the whole run, as the first push of it;
- ``stock git push``: the same branch pushed by the git binary, the floor;
- ``gitruns push + pre-receive``: the same first push with the gitruns
  hook installed, which decodes and checks every chunk;
- ``incremental``: 1,000 more steps pushed on top, without and with the hook
  (which checks only the new commits);
- ``gitruns pull``: the whole run pulled back into an empty repository, which
  runs the hook's checks on every commit before the branch is created.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dulwich.repo import Repo  # noqa: E402

import gitruns  # noqa: E402
from gitruns import hooks, remote  # noqa: E402
from gitruns.refs import RunRef  # noqa: E402
from tests.gitserver import GitServer, running_daemon, scrubbed_env  # noqa: E402


def log_run(
    repo: Path, run_id: str, steps: range, metrics: int, **init: object
) -> None:
    """Log ``steps`` with ``metrics`` float metrics each, as a training loop would."""
    run = gitruns.init(project="bench", id=run_id, repo=str(repo), **init)  # type: ignore[arg-type]
    names = [f"m{i}" for i in range(metrics)]
    for step in steps:
        run.log({name: 1.0 / (step + 1 + i) for i, name in enumerate(names)}, step=step)
    run.finish()


def timed(action: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def stock_push(local: Path, url: str, ref: bytes) -> None:
    """The floor: the git binary pushing the same branch."""
    subprocess.run(
        ["git", "--git-dir", str(local), "push", "--quiet", url, ref.decode()],
        check=True,
        env=scrubbed_env(),
    )


def fresh(server: GitServer, name: str, hook: bool) -> str:
    path = server.create(name)
    if hook:
        with closing(Repo(str(path))) as served:
            hooks.install_hook(served, "pre-receive")
    return server.url(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gitruns-bench-push-") as scratch:
        tmp = Path(scratch)
        local = tmp / "local.git"
        started = time.perf_counter()
        log_run(local, "long", range(args.steps), args.metrics)
        logged = time.perf_counter() - started
        subprocess.run(["git", "--git-dir", str(local), "gc", "--quiet"], check=True)
        objects = subprocess.run(
            ["git", "--git-dir", str(local), "count-objects", "-v"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        size_pack = next(
            int(line.split()[1]) for line in objects.splitlines() if "size-pack" in line
        )
        run = RunRef("bench", "long")
        figures: dict[str, list[float]] = {}

        with running_daemon(tmp / "served", tmp / "daemon.log") as server:
            for i in range(args.repeat):
                with closing(Repo(str(local))) as repo:
                    plain = fresh(server, f"plain{i}.git", hook=False)
                    stock = fresh(server, f"stock{i}.git", hook=False)
                    hooked = fresh(server, f"hooked{i}.git", hook=True)
                    measure = figures.setdefault
                    measure("gitruns push", []).append(
                        timed(remote.push, repo, plain, [run])
                    )
                    measure("stock git push", []).append(
                        timed(stock_push, local, stock, run.ref)
                    )
                    measure("gitruns push + pre-receive", []).append(
                        timed(remote.push, repo, hooked, [run])
                    )

                # A small update on top of what the hooked server holds.
                first = args.steps + i * 1000
                more = range(first, first + 1000)
                log_run(local, "long", more, args.metrics, resume="must")
                with closing(Repo(str(local))) as repo:
                    figures.setdefault("incremental (1,000 steps)", []).append(
                        timed(remote.push, repo, plain, [run])
                    )
                    figures.setdefault("incremental + pre-receive", []).append(
                        timed(remote.push, repo, hooked, [run])
                    )

                # The run comes back from the server, checked before it lands.
                back = tmp / f"back{i}.git"
                subprocess.run(
                    ["git", "init", "--quiet", "--bare", str(back)], check=True
                )
                with closing(Repo(str(back))) as repo:
                    figures.setdefault("gitruns pull (checked)", []).append(
                        timed(remote.pull, repo, plain, [run])
                    )

    print(
        f"run: {args.steps:,} steps x {args.metrics} metrics, logged in "
        f"{logged:.1f} s, {size_pack} KiB packed"
    )
    print(f"push to loopback git daemon, median of {args.repeat}:")
    for label, seconds in figures.items():
        print(f"  {label:<30} {statistics.median(seconds):8.3f} s")


if __name__ == "__main__":
    main()
