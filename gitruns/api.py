"""``gitruns.Api``: reading, filtering and editing the runs of a repository."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gitruns.commits import commit_run
from gitruns.errors import InvalidArgumentError, RepositoryError, require
from gitruns.reader import RunView, readable_runs
from gitruns.refs import RunRef, Sha
from gitruns.repository import open_store
from gitruns.run_config import plain_value
from gitruns.settings import env_repo
from gitruns.store import RunStore, Snapshot, now_iso
from gitruns.writer import RunWriter, WriterOptions

#: Comparison operators ``Api.runs(filters=...)`` understands.
OPERATORS = (
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$regex",
)

#: Run fields a filter or order may name, besides ``config.*`` and ``summary.*``.
#: ``name`` is the run id, as in W&B's filters; ``display_name`` is the name.
_FIELDS = {
    "id": lambda run: run.id,
    "name": lambda run: run.id,
    "display_name": lambda run: run.name,
    "displayName": lambda run: run.name,
    "project": lambda run: run.project,
    "state": lambda run: run.state,
    "tags": lambda run: run.tags,
    "group": lambda run: run.group,
    "job_type": lambda run: run.job_type,
    "jobType": lambda run: run.job_type,
    "created_at": lambda run: run.info.get("created"),
    "createdAt": lambda run: run.info.get("created"),
    "updated_at": lambda run: run.info.get("updated"),
    "updatedAt": lambda run: run.info.get("updated"),
    "heartbeat_at": lambda run: run.info.get("updated"),
    "last_step": lambda run: run.last_step,
}

_EDITABLE = ("name", "tags", "notes", "group", "job_type")


class Api:
    """Read access to the runs of one repository, with W&B's names.

    Args:
        repo: the repository; by default resolved as ``gitruns.init`` does.
            A mapping here is taken as W&B's ``overrides``.
        overrides: W&B's defaults; ``project`` is used when a path names none.
        timeout: accepted for W&B scripts; reads are local.
        api_key: accepted for W&B scripts; there are no accounts.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str] | RunStore | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        if isinstance(repo, Mapping):
            repo, overrides = None, repo
        if isinstance(repo, RunStore):
            self.store = repo
        else:
            self.store = open_store(repo, create=False, env_repo=env_repo())
        self.overrides = dict(overrides or {})

    def runs(
        self,
        path: str | None = None,
        filters: Mapping[str, Any] | None = None,
        order: str | None = None,
        per_page: int = 50,
        include_sweeps: bool = True,
    ) -> list[ApiRun]:
        """The runs of a project (``entity/project`` or ``project``), or of all.

        Args:
            path: the project; None lists every project's runs.
            filters: W&B's MongoDB-style query on ``config.<key>``,
                ``summary.<key>`` (or ``summary_metrics.<key>``), ``tags``,
                ``state``, ``display_name``, ``group``, ``job_type``,
                ``created_at``...; operators are :data:`OPERATORS` plus
                ``$and``, ``$or`` and ``$nor``.
            order: a field as in ``filters``, ``+`` (ascending, the default)
                or ``-`` (descending) in front; runs missing it come last.
                Without it runs come by project and id.
            per_page: accepted for W&B scripts; reads are local.
            include_sweeps: accepted for W&B scripts.

        Without filters or order, nothing of a run is read until it is used,
        so listing many runs costs what listing their branches does. With
        them, every run's run.json, config.json and summary.json are read
        (not its history), and a run whose metadata cannot be read (a
        malformed, oversized or wrongly typed file, or a run.json naming
        another run) is left out with a warning, so that one damaged run does
        not hide the others; :meth:`run` on it raises the error.

        Raises:
            InvalidValueError: for an unknown operator or field.
        """
        project = path if path is not None else self.overrides.get("project")
        if project is not None and "/" in project:
            project = project.rstrip("/").rsplit("/", 1)[1]
        if not filters and not order:
            return [ApiRun(self.store, ref) for ref in self.store.list_runs(project)]
        runs = readable_runs(self.store, project, ApiRun)
        if filters:
            runs = [run for run in runs if matches(run, filters)]
        if order:
            runs = sort_runs(runs, order)
        return runs

    def run(self, path: str) -> ApiRun:
        """One run by its path.

        Args:
            path: ``id``, ``project/id``, ``entity/project/id`` or W&B's
                ``entity/project/runs/id``.

        Raises:
            RunNotFoundError: if no run matches.
            AmbiguousRunError: if a bare id names runs in several projects.
        """
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[2] == "runs":
            parts = [parts[1], parts[3]]
        elif len(parts) == 1 and self.overrides.get("project"):
            parts = [str(self.overrides["project"]), parts[0]]
        return ApiRun(self.store, self.store.resolve("/".join(parts)))


class RunSummary(dict[str, Any]):
    """A stored run's summary; ``update()`` merges and commits at once."""

    def __init__(self, data: Mapping[str, Any], run: ApiRun) -> None:
        super().__init__(data)
        self._run = run

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Merge keys in and commit the change (W&B's ``run.summary.update()``)."""
        super().update(*args, **kwargs)
        self._run.update()


class ApiRun(RunView):
    """A stored run as :meth:`Api.runs` returns it: readable and editable.

    ``config``, ``summary``, ``tags``, ``name``, ``notes``, ``group`` and
    ``job_type`` may be changed in place; :meth:`update` commits the changes.
    """

    def __init__(self, store: RunStore, run: RunRef, commit: Sha | None = None) -> None:
        super().__init__(store, run, commit)
        self._edits: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<ApiRun {self.path} ({self.state})>"

    # -- editable fields ------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The run's hyper-parameters (a copy; edit it, then :meth:`update`)."""
        if "config" not in self._edits:
            # The file alone: a listing's runs need not read their history.
            self._edits["config"] = copy.deepcopy(super().config)
        value: dict[str, Any] = self._edits["config"]
        return value

    @property
    def summary(self) -> RunSummary:
        """The run's summary (a copy; edit it, then :meth:`update`)."""
        if "summary" not in self._edits:
            self._edits["summary"] = RunSummary(copy.deepcopy(super().summary), self)
        value: RunSummary = self._edits["summary"]
        return value

    @property
    def tags(self) -> list[str]:
        """The run's tags (a list to edit, or assign a new one)."""
        if "tags" not in self._edits:
            self._edits["tags"] = list(self.info.get("tags") or [])
        value: list[str] = self._edits["tags"]
        return value

    @tags.setter
    def tags(self, value: Sequence[str]) -> None:
        self._edits["tags"] = [str(t) for t in value]

    @property
    def name(self) -> str:
        """The display name."""
        return str(self._edits.get("name") or self.info.get("name") or self.id)

    @name.setter
    def name(self, value: str) -> None:
        self._edits["name"] = str(value)

    @property
    def display_name(self) -> str:
        """W&B's other name for :attr:`name`."""
        return self.name

    @display_name.setter
    def display_name(self, value: str) -> None:
        self.name = value

    @property
    def notes(self) -> str:
        """The run's notes."""
        return str(self._edits.get("notes", self.info.get("notes")) or "")

    @notes.setter
    def notes(self, value: str) -> None:
        self._edits["notes"] = str(value)

    @property
    def group(self) -> str | None:
        """The run's group."""
        value = self._edits.get("group", self.info.get("group"))
        return None if value is None else str(value)

    @group.setter
    def group(self, value: str | None) -> None:
        self._edits["group"] = value

    @property
    def job_type(self) -> str | None:
        """The run's job type."""
        value = self._edits.get("job_type", self.info.get("job_type"))
        return None if value is None else str(value)

    @job_type.setter
    def job_type(self, value: str | None) -> None:
        self._edits["job_type"] = value

    @property
    def entity(self) -> str | None:
        """The entity the run was started with, if any."""
        value = self.info.get("entity")
        return None if value is None else str(value)

    @property
    def created_at(self) -> str | None:
        """When the run was created (UTC, ISO 8601)."""
        value = self.info.get("created")
        return None if value is None else str(value)

    # -- history, with W&B's streams -----------------------------------------

    def history(
        self,
        samples: int | None = None,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
        *,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Any:
        """The history as a pandas DataFrame (or a list of dicts with pandas=False).

        Args:
            samples: at most this many rows, evenly spaced; None (the default,
                unlike W&B's 500) returns every step.
            keys: only steps where all these keys were logged.
            x_axis: a column to put first (a step metric such as ``epoch``).
            pandas: return a DataFrame instead of a list of dicts.
            stream: ``default``; W&B's ``system`` stream is empty here.
            min_step: first step (inclusive).
            max_step: step to stop before (exclusive).
        """
        if stream != "default":
            return _empty(pandas)
        return super().history(
            samples, keys, x_axis, pandas, min_step=min_step, max_step=max_step
        )

    # -- committing edits ----------------------------------------------------

    def update(self) -> None:
        """Commit the edits made to this run as a new commit on its branch.

        The commit is made under the run's lock (a live writer of the run is
        an error naming it) on top of the branch's current tip, so steps
        logged since this view was read are kept.

        Raises:
            RunLockedError: if a process is writing the run.
            RunNotFoundError: if the run's branch is gone.
            ConflictError: if the branch moved during the commit.
            RepositoryError: if the repository cannot be read or written.
        """
        base = self.snapshot
        changes = self._changes(base)
        if not changes:
            return
        writer = RunWriter.open(self.store, self.ref, WriterOptions(background=False))
        try:
            tip = writer.snapshot
            if tip.commit is None:
                raise RepositoryError(
                    f"run {self.path}: its branch names no commit to edit; "
                    "check it with `gitruns runs` and retry"
                )
            new = _edited(tip, changes)
            what = ", ".join(sorted(changes))
            sha = commit_run(
                self.store,
                self.ref,
                new,
                [tip.commit],
                f"edit {what}",
                reflog=f"gitruns: edit {what}",
            )
        finally:
            writer.abandon()
        self._commit = sha
        self.refresh()
        self._edits = {}

    def _changes(self, base: Snapshot) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        edits = self._edits
        for field in ("config", "summary"):
            if field in edits:
                old: Mapping[str, Any] = getattr(base, field)
                new = {str(k): plain_value(v) for k, v in edits[field].items()}
                changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
                removed = sorted(set(old) - set(new))
                if changed or removed:
                    changes[field] = (changed, removed)
        for field in _EDITABLE:
            if field in edits:
                old_value = base.info.get(field)
                if field == "tags":
                    old_value = list(old_value or [])
                if edits[field] != old_value:
                    changes[field] = edits[field]
        return changes


def _edited(tip: Snapshot, changes: Mapping[str, Any]) -> Snapshot:
    """``tip`` with the changes applied: a new snapshot to commit."""
    info = dict(tip.info)
    config = dict(tip.config)
    summary = dict(tip.summary)
    user_set = set(info.get("summary_set") or [])
    if "config" in changes:
        changed, removed = changes["config"]
        config.update(changed)
        for key in removed:
            config.pop(key, None)
    if "summary" in changes:
        # Edited values become user-set, so that a later resume keeps them.
        changed, removed = changes["summary"]
        summary.update(changed)
        user_set |= set(changed)
        for key in removed:
            summary.pop(key, None)
            user_set.discard(key)
        info["summary_set"] = sorted(user_set)
    for field in _EDITABLE:
        if field in changes:
            info[field] = changes[field]
    info["updated"] = now_iso()
    return Snapshot(None, info, config, summary, tip.history, dict(tip.extra))


def _empty(pandas: bool) -> Any:
    if not pandas:
        return []
    return require("pandas", "pandas", "history(pandas=True)").DataFrame()


# -- filters and order --------------------------------------------------------


def matches(run: RunView, query: Mapping[str, Any]) -> bool:
    """Whether ``run`` satisfies a W&B (MongoDB-style) filter.

    Raises:
        InvalidValueError: for an unknown operator or field.
    """
    for key, condition in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(condition, (list, tuple)):
                raise InvalidArgumentError("filters", condition, f"{key} takes a list")
            results = (matches(run, part) for part in condition)
            if key == "$and" and not all(results):
                return False
            if key == "$or" and not any(results):
                return False
            if key == "$nor" and any(results):
                return False
            continue
        if key.startswith("$"):
            raise InvalidArgumentError(
                "filters", key, "use $and, $or or $nor here, or a field name"
            )
        found, value = field_value(run, key)
        if not _satisfies(found, value, condition):
            return False
    return True


def field_value(run: RunView, key: str, what: str = "filters") -> tuple[bool, Any]:
    """``(found, value)`` of a filter field: ``config.lr``, ``summary.acc.max``...

    Args:
        run: the run to read.
        key: the field.
        what: the argument that named the field, for the error.

    Raises:
        InvalidValueError: for a field that is none of those a filter knows.
    """
    head, _, rest = key.partition(".")
    if head == "config" and rest:
        found, value = _dig(run.config, rest)
        if not found and rest.endswith(".value"):
            # W&B stores config keys as {"value": ...} and filters say so.
            found, value = _dig(run.config, rest[: -len(".value")])
        return found, value
    if head in ("summary", "summary_metrics") and rest:
        return _dig(run.summary, rest)
    if key in _FIELDS:
        value = _FIELDS[key](run)
        return value is not None, value
    raise InvalidArgumentError(
        what,
        key,
        "name config.<key>, summary.<key>, or one of " + ", ".join(_FIELDS),
    )


def _dig(data: Any, path: str) -> tuple[bool, Any]:
    # Keys may hold dots themselves ("lr.decay"), so try the longest first.
    if not isinstance(data, Mapping):
        return False, None
    if path in data:
        return True, data[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in data:
            found, value = _dig(data[head], ".".join(parts[cut:]))
            if found:
                return True, value
    return False, None


def _satisfies(found: bool, value: Any, condition: Any) -> bool:
    if (
        isinstance(condition, Mapping)
        and condition
        and all(isinstance(k, str) and k.startswith("$") for k in condition)
    ):
        return all(_test(op, found, value, arg) for op, arg in condition.items())
    return _test("$eq", found, value, condition)


def _test(op: str, found: bool, value: Any, arg: Any) -> bool:
    if op == "$exists":
        return found == bool(arg)
    if op == "$ne":
        return not _test("$eq", found, value, arg)
    if op == "$nin":
        return not _test("$in", found, value, arg)
    if op not in OPERATORS:
        raise InvalidArgumentError("filters", op, f"use one of {', '.join(OPERATORS)}")
    if not found:
        return False
    # A list field (tags) matches when the whole list or any element does.
    candidates = [value, *value] if isinstance(value, list) else [value]
    if op == "$eq":
        return any(_equal(c, arg) for c in candidates)
    if op == "$in":
        if not isinstance(arg, (list, tuple, set)):
            raise InvalidArgumentError("filters", arg, "$in takes a list")
        return any(_equal(c, a) for c in candidates for a in arg)
    if op == "$regex":
        try:
            pattern = re.compile(str(arg))
        except re.error as exc:
            raise InvalidArgumentError(
                "filters", arg, f"not a valid regular expression ({exc})"
            ) from None
        return any(isinstance(c, str) and pattern.search(c) for c in candidates)
    return any(_compare(op, c, arg) for c in candidates)


def _equal(a: Any, b: Any) -> bool:
    # Mongo does not match 1 and True; Python would.
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return False
    try:
        if op == "$gt":
            return bool(a > b)
        if op == "$gte":
            return bool(a >= b)
        if op == "$lt":
            return bool(a < b)
        return bool(a <= b)
    except TypeError:
        # A str compared with a number matches nothing, as in a database.
        return False


def sort_runs(runs: list[ApiRun], order: str) -> list[ApiRun]:
    """Runs sorted by a field; ``+`` or ``-`` in front; missing values last.

    Raises:
        InvalidValueError: for an unknown field.
    """
    descending = order.startswith("-")
    key = order.lstrip("+-")
    present: list[tuple[Any, ApiRun]] = []
    missing: list[ApiRun] = []
    for run in runs:
        found, value = field_value(run, key, "order")
        if found and value is not None and value == value:  # NaN sorts as missing
            present.append((value, run))
        else:
            missing.append(run)
    present.sort(key=lambda pair: pair[1].path)
    present.sort(key=lambda pair: _order_key(pair[0]), reverse=descending)
    return [run for _, run in present] + missing


def _order_key(value: Any) -> tuple[int, float, str]:
    # Numbers before text before anything else, so mixed kinds still sort.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, repr(value))
