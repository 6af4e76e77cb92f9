"""Which repository a script's runs go to, and the code state a run records."""

from __future__ import annotations

import atexit
import io
import logging
import os
import weakref
from pathlib import Path
from typing import Any

from gitruns.errors import RepositoryError
from gitruns.store import RunStore, locate_repository

logger = logging.getLogger(__name__)

MAX_PATCH = 1 << 20

_open_stores: weakref.WeakSet[RunStore] = weakref.WeakSet()


def open_store(
    repo: str | os.PathLike[str] | None = None,
    start: Path | None = None,
    *,
    create: bool = True,
    env_repo: str | None = None,
) -> RunStore:
    """Open the repository: repo=, GITRUNS_REPO, the enclosing one, or ./.gitruns.

    Args:
        repo: an explicit repository.
        start: the folder to search from instead of the working directory.
        create: make a bare repository there if there is none (writers do;
            readers should not turn a typo into an empty repository).
        env_repo: the repository ``GITRUNS_REPO`` names, which the caller
            read (see :func:`gitruns.settings.env_repo`).

    Returns:
        The open store; it is closed at exit if the caller does not close it.

    Raises:
        RepositoryError: if there is no repository and ``create`` is off (or
            the path may not be created), if the path exists and is not a Git
            repository, or if it cannot be read or created.
    """
    where = start or Path.cwd()
    path, may_create = locate_repository(repo, env_repo, where)
    if not create and repo is None and not env_repo and not path.exists():
        # The embedded default, which only a writer creates.
        raise RepositoryError(
            f"no runs here yet: no Git repository encloses {where} and there is "
            f"no {path.name}; runs appear once gitruns.init() or `gitruns "
            "import` writes some, or pass --repo",
            path=str(path),
        )
    store = RunStore.open(path, create=create and may_create)
    if not _open_stores:
        atexit.register(_close_stores)
    _open_stores.add(store)
    return store


def _close_stores() -> None:
    # Close packs before interpreter teardown, when dulwich can no longer.
    for store in list(_open_stores):
        store.close()


def code_state(start: Path) -> tuple[dict[str, Any] | None, bytes | None]:
    """The code commit a run starts from, and a patch of uncommitted changes."""
    from dulwich import porcelain
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        repo = Repo.discover(str(start))
    except NotGitRepository:
        return None, None
    try:
        head = repo.head()
    except KeyError:
        repo.close()
        return None, None
    try:
        branch: str | None = porcelain.active_branch(repo).decode()
    except (KeyError, ValueError, IndexError):
        branch = None
    if repo.bare:
        repo.close()
        return {"commit": head.decode(), "branch": branch, "dirty": False}, None
    patch = io.BytesIO()
    try:
        porcelain.diff(repo, commit=b"HEAD", outstream=patch)
    except Exception as exc:  # noqa: BLE001 - a patch is a courtesy, never fatal
        logger.debug("no code patch: %s", exc)
    finally:
        repo.close()
    data = patch.getvalue()
    info = {"commit": head.decode(), "branch": branch, "dirty": bool(data)}
    if len(data) > MAX_PATCH:
        data = data[:MAX_PATCH] + b"\n[gitruns: patch cut at 1 MiB]\n"
    return info, data or None
