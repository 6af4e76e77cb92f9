"""``gitruns.Api``: reading the runs of a repository, with W&B's names."""

from __future__ import annotations

import os
from typing import Any

from gitruns.reader import RunView
from gitruns.run import open_store
from gitruns.store import RunStore


class Api:
    """Read access to the runs of one repository.

    Args:
        repo: the repository; by default resolved as ``gitruns.init`` does.
    """

    def __init__(self, repo: str | os.PathLike[str] | RunStore | None = None) -> None:
        self.store = repo if isinstance(repo, RunStore) else open_store(repo)

    def runs(self, project: str | None = None, **_: Any) -> list[RunView]:
        """The runs of the repository, or of one project (``entity/project`` works)."""
        if project is not None and "/" in project:
            project = project.rsplit("/", 1)[1]
        return [RunView(self.store, ref) for ref in self.store.list_runs(project)]

    def run(self, path: str) -> RunView:
        """One run by ``id``, ``project/id`` or ``entity/project/id``."""
        return RunView(self.store, self.store.resolve(path))
