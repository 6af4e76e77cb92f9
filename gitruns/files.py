"""The files save() keeps in a run's tree: their paths, size limit and trees."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dulwich.objects import Tree

from gitruns.errors import InvalidArgumentError
from gitruns.refs import Sha
from gitruns.store import FILE_MODE, TREE_MODE, RunStore

#: The largest file :func:`save` keeps in a run's tree; Git is no place for
#: checkpoints.
MAX_SAVE_BYTES = 1 << 20

#: The folder of a run's tree that holds the files :func:`save` keeps.
FILES_TREE = b"files"


def tree_path(path: str, base: str) -> str:
    """``path`` relative to ``base`` with / separators, checked for a Git tree."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    parts = Path(relative).parts
    if not parts or parts[0] == ".." or os.path.isabs(relative):
        raise InvalidArgumentError(
            "save", path, f"it is outside base_path {base!r}; pass a base_path above it"
        )
    if any(part.lower() == ".git" for part in parts):
        raise InvalidArgumentError("save", path, "Git trees cannot hold a '.git' entry")
    return "/".join(parts)


def write_files_tree(store: RunStore, files: Mapping[str, Sha], path: str) -> Sha:
    """Write ``files`` (tree path -> blob) as nested trees; return the root's id.

    The objects are written as they are; the caller maps OS and dulwich errors
    (see :func:`gitruns.errors.mapped_errors`).

    Args:
        store: the repository to write the trees into.
        files: each file's path in the tree (``/``-separated) and its blob.
        path: what save() was given, for the error message.

    Returns:
        The id of the root tree.

    Raises:
        InvalidArgumentError: if one path is a file and a folder of another.
    """
    root: dict[str, Any] = {}
    for name, sha in files.items():
        *folders, leaf = name.split("/")
        node = root
        for folder in folders:
            child = node.setdefault(folder, {})
            if not isinstance(child, dict):
                raise InvalidArgumentError(
                    "save", path, f"{folder!r} is a file already"
                )
            node = child
        if isinstance(node.get(leaf), dict):
            raise InvalidArgumentError("save", path, f"{leaf!r} is a folder already")
        node[leaf] = sha

    def write(node: dict[str, Any]) -> Sha:
        tree = Tree()
        for name, child in node.items():
            if isinstance(child, dict):
                tree.add(name.encode(), TREE_MODE, write(child))
            else:
                tree.add(name.encode(), FILE_MODE, child)
        store.add(tree)
        return Sha(tree.id)

    return write(root)


def read_files_tree(
    store: RunStore, sha: Sha, prefix: str, into: dict[str, Sha]
) -> None:
    """Add the files under tree ``sha`` to ``into`` (tree path -> blob).

    Raises:
        RepositoryError: if a tree is missing, too large or malformed.
    """
    tree = store.read_tree(sha, "a tree of the saved files")
    for name, mode, child in tree.iteritems():
        path = prefix + name.decode(errors="replace")
        if mode == TREE_MODE:
            read_files_tree(store, Sha(child), path + "/", into)
        else:
            into[path] = Sha(child)
