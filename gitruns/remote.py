"""Push, fetch and pull run branches to and from any Git remote dulwich speaks to."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dulwich.client import (
    GitClient,
    LocalGitClient,
    SubprocessGitClient,
    get_transport_and_path,
)
from dulwich.objects import Commit, ObjectID
from dulwich.refs import Ref
from dulwich.repo import BaseRepo, Repo

from gitruns import hooks
from gitruns.errors import (
    DivergedError,
    GitRunsError,
    RemoteError,
    RunNotFoundError,
    mask_credentials,
    remote_errors,
)
from gitruns.refs import RUNS_PREFIX, RunRef, Sha, check_name

logger = logging.getLogger(__name__)

#: A progress sink: gets text as the transport produces it (with ``\r`` and ``\n``).
Progress = Callable[[str], None]

_BRANCH_PREFIX = b"refs/heads/"
_TRACKING_PREFIX = b"refs/remotes/"

#: Outcomes after which the ref on the other side is what the user asked for.
_OK_STATUSES = frozenset(
    {"created", "fast-forward", "forced", "up to date", "new", "updated", "ahead"}
)
#: Outcomes that move a ref: a push sends it to the server, a pull moves the
#: local run to it.
_MOVING_STATUSES = frozenset({"created", "fast-forward", "forced"})


@dataclass(frozen=True)
class Remote:
    """Where runs go: a configured remote (with its name) or a bare URL.

    Attributes:
        name: the remote's name in the repository's Git config, or None for a URL.
        url: the URL or path dulwich connects to; may hold credentials.
    """

    name: str | None
    url: str

    def __str__(self) -> str:
        shown = mask_credentials(self.url)
        return f"{self.name} ({shown})" if self.name else shown

    @property
    def command_name(self) -> str:
        """How a command names this remote: its name, else its URL (no credentials)."""
        return self.name or mask_credentials(self.url)

    def tracking_ref(self, ref: bytes) -> bytes | None:
        """``refs/remotes/<name>/runs/...`` for a run ref; None for a bare URL."""
        if self.name is None:
            return None
        return _TRACKING_PREFIX + self.name.encode() + b"/" + ref[len(_BRANCH_PREFIX) :]


def tracked_run_counts(repo: BaseRepo) -> dict[str, int]:
    """How many runs each remote has under ``refs/remotes/<remote>/``.

    After a plain ``git clone`` of a runs remote, its runs sit there rather
    than under ``refs/heads/runs/``, until ``gitruns pull`` makes them local.

    Args:
        repo: the local repository.

    Returns:
        Remote name -> how many run branches it tracks there.
    """
    counts: dict[str, int] = {}
    runs = RUNS_PREFIX[len(_BRANCH_PREFIX) :]
    for name in repo.refs.keys(base=Ref(_TRACKING_PREFIX.rstrip(b"/"))):
        remote, _, rest = name.partition(b"/")
        if rest.startswith(runs):
            key = remote.decode(errors="replace")
            counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(frozen=True)
class RefOutcome:
    """What happened to one run ref in a push, fetch or pull.

    Attributes:
        ref: the run's branch, ``refs/heads/runs/<project>/<run_id>``.
        status: one of ``created``, ``fast-forward``, ``forced``, ``up to date``,
            ``rejected`` (push: the server or the pre-push check refused it;
            pull: the fetched commits failed the checks), ``diverged`` (both
            sides have commits the other lacks), ``behind`` (push: the remote
            has commits this run lacks, and this run has none of its own),
            ``ahead`` (pull: the local run has commits the remote lacks),
            ``new`` and ``updated`` (fetch: the remote-tracking ref).
        old: the sha the updated ref had before, None if there was no such ref.
        new: the sha it has now (or would have had, for a refusal).
        message: why, in short: the server's reason (``hook declined``), what
            a check found, or what a forced update replaced.
        side: whose ref moves: ``"remote"`` for a push, ``"local"`` otherwise.
        remote_text: what the server printed about this ref (a hook's lines),
            for a ref the server refused.
        commit: the commit a check refused, when a check refused the ref.
        advice: what the user can do about a refusal.
    """

    ref: bytes
    status: str
    old: Sha | None
    new: Sha | None
    message: str = ""
    side: str = "local"
    remote_text: tuple[str, ...] = ()
    commit: Sha | None = None
    advice: str = ""

    @property
    def ok(self) -> bool:
        """Whether the ref ended where the operation meant it to."""
        return self.status in _OK_STATUSES

    @property
    def run(self) -> RunRef:
        """The run this ref belongs to."""
        return RunRef.from_ref(self.ref)

    @property
    def detail(self) -> str:
        """The message, followed by what the server printed about the ref."""
        text = self.message or self.status
        if self.remote_text:
            text += f" (remote: {'; '.join(self.remote_text)})"
        return text

    def error(self, action: str) -> RemoteError | None:
        """The error this outcome stands for, or None if it is fine.

        Args:
            action: what was refused, for the message (``push to origin``).
        """
        if self.ok:
            return None
        if self.status == "diverged" and self.old and self.new:
            local, theirs = (
                (self.new, self.old) if self.side == "remote" else (self.old, self.new)
            )
            if self.advice:
                return DivergedError(
                    self.run.branch, local.decode(), theirs.decode(), self.advice
                )
            return DivergedError(self.run.branch, local.decode(), theirs.decode())
        advice = f"; {self.advice}" if self.advice else ""
        return RemoteError(f"{action} refused {self.run.branch}: {self.detail}{advice}")

    def __str__(self) -> str:
        span = ""
        if self.old and self.new and self.old != self.new:
            span = f" {self.old[:7].decode()}..{self.new[:7].decode()}"
        elif self.new:
            span = f" {self.new[:7].decode()}"
        note = f": {self.detail}" if self.message or self.remote_text else ""
        return f"{self.run.path}: {self.status}{span}{note}"


# -- remotes and clients ----------------------------------------------------


def resolve_remote(repo: BaseRepo, remote: str, *, push: bool = False) -> Remote:
    """Turn a remote name from the repository's Git config, or a URL, into a Remote.

    Args:
        repo: the repository whose config names the remotes.
        remote: a remote name (``origin``) or a URL or path.
        push: prefer ``remote.<name>.pushurl`` when it is set.

    Raises:
        RemoteError: if ``remote`` is neither a configured remote nor a URL.
    """
    keys = (b"pushurl", b"url") if push else (b"url",)
    url = _configured_url(repo, remote, keys)
    if url is not None:
        return Remote(remote, url)

    if _looks_like_url(remote):
        return Remote(None, remote)
    raise RemoteError(
        f"no remote named {remote!r} in this repository; add it with "
        f"`{git_command(repo)} remote add {remote} <url>` or pass a URL or path "
        "instead"
    )


def names_remote(repo: BaseRepo, text: str) -> bool:
    """Whether ``text`` names a remote: a configured one, a URL or an existing path.

    A run name (``demo/abc``) is none of these, unless a folder of that name
    exists; the CLI uses this to let REMOTE be left out before RUNs.
    """
    if _configured_url(repo, text, (b"url", b"pushurl")) is not None:
        return True
    if "://" in text or os.path.exists(text):
        return True
    return bool(re.fullmatch(r"[^/:]+:.*", text))


def _configured_url(repo: BaseRepo, name: str, keys: Sequence[bytes]) -> str | None:
    config = repo.get_config_stack()
    for key in keys:
        try:
            return config.get((b"remote", name.encode()), key).decode()
        except KeyError:
            continue
    return None


def git_command(repo: BaseRepo) -> str:
    """How to run ``git`` on this repository from the current directory."""
    path = getattr(repo, "path", None)
    if path is None:
        return "git"
    controldir = repo.controldir() if isinstance(repo, Repo) else path
    if Path(controldir).resolve() != Path(path).resolve():
        # A work tree: plain `git` works inside it.
        inside = Path.cwd().resolve().is_relative_to(Path(path).resolve())
        return "git" if inside else f"git -C {shlex.quote(str(path))}"
    return f"git --git-dir {shlex.quote(str(path))}"


def _looks_like_url(text: str) -> bool:
    if "://" in text or os.sep in text or text.startswith("."):
        return True
    # scp-like ``host:path``, as git accepts for ssh.
    return bool(re.fullmatch(r"[^/:]+:.*", text)) or os.path.exists(text)


def _client(
    repo: BaseRepo, remote: Remote, operation: str, ssh_command: str | None
) -> tuple[GitClient, str]:
    with remote_errors(str(remote), f"connecting to {remote}"):
        try:
            client, path = get_transport_and_path(
                remote.url,
                config=repo.get_config_stack(),
                operation=operation,
                ssh_command=ssh_command,
            )
        except ValueError as exc:
            raise RemoteError(
                f"cannot use {remote} as a remote: {mask_credentials(str(exc))}; "
                "pass a path or a file://, ssh://, git:// or http(s):// URL"
            ) from exc
        if operation == "push" and isinstance(client, LocalGitClient):
            client = _receiving_client(client, path, remote)
    _local_without_bitmaps(client)
    return client, path


#: Hooks that ``git receive-pack`` runs on the receiving side of a push.
_RECEIVE_HOOKS = ("pre-receive", "update", "proc-receive", "post-receive")


def _receiving_client(client: LocalGitClient, path: str, remote: Remote) -> GitClient:
    """A client for a push to a path that runs the receiving side's hooks.

    dulwich writes a push to a local path itself and runs none of the target's
    hooks, so a store kept append-only by ``hooks/pre-receive`` would take a
    force push from a path remote. ``git receive-pack``, run as a subprocess
    the way a Git server runs it, does run them.

    Raises:
        NotGitRepository: no repository is at ``path``.
        RemoteError: the target has hooks and no ``git`` is installed to run
            them.
    """
    # A missing repository is told as such here, not as git's "fatal: ...".
    with Repo(path) as target:
        hooks = Path(target.controldir()) / "hooks"
    if shutil.which("git"):
        return SubprocessGitClient()
    found = [h for h in _RECEIVE_HOOKS if os.access(hooks / h, os.X_OK)]
    if found:
        raise RemoteError(
            f"{remote} has a {found[0]} hook, which only `git receive-pack` runs, "
            "and git is not installed here; install git and push again"
        )
    return client


@contextmanager
def _graph_walks(repo: BaseRepo) -> Iterator[None]:
    """Make dulwich find what to send by walking commits, not by pack bitmaps.

    dulwich 1.2.21 reads a ``.bitmap`` for every pack once any pack has one
    (``git gc`` writes one), and the packs dulwich writes itself have none:
    a push or fetch after ``git gc`` and more logging fails with
    FileNotFoundError. Run histories are short walks, so little is lost.
    """
    # TODO: drop once dulwich's find_commit_bitmaps skips packs without a bitmap.
    store = repo.object_store
    provider = type(store).get_reachability_provider

    def graph_only(prefer_bitmaps: bool = True) -> Any:
        return provider(store, prefer_bitmaps=False)

    store.get_reachability_provider = graph_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.get_reachability_provider


def _local_without_bitmaps(client: GitClient) -> None:
    """Have a path remote open its repository with :func:`_graph_walks` too."""
    if not isinstance(client, LocalGitClient):
        return
    opener = client._open_repo

    @contextmanager
    def open_repo(path: str | bytes) -> Iterator[Any]:
        with opener(path) as repo, _graph_walks(repo):
            yield repo

    client._open_repo = open_repo  # type: ignore[method-assign,assignment]


#: A progress line of git's own (``Resolving deltas:  50% (1/2)``): shown live.
_GIT_PROGRESS = re.compile(r"^[A-Za-z][\w ]*: +\d+% \(\d+/\d+\)")
#: dulwich's local counters (``writing pack data: 0/46``), which never say they ended.
_COUNTER = re.compile(r"^(?P<label>[a-z][a-z ]+): (?P<done>\d+)/(?P<total>\d+)$")


class _ProgressTap:
    """Passes transfer progress on as text, and keeps the server's messages.

    With ``hold`` (a push), the server's message lines (what its hooks print)
    are held back until the outcomes are known: those about a refused run go
    into its outcome, and :meth:`release` passes the rest on once each, as
    ``remote: ...`` lines. Progress lines always pass at once.
    """

    def __init__(self, sink: Progress | None, *, hold: bool = False) -> None:
        self.sink = sink
        self.hold = hold
        self.messages: list[str] = []
        self._partial = ""
        self._counter: tuple[str, int] | None = None

    def local(self, text: str) -> None:
        """Progress of this side (objects counted and written)."""
        self._counter = None
        self._emit(text)

    def __call__(self, data: bytes | str) -> None:
        """What the transport reports: the server's side-band text."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = self._partial + mask_credentials(text)
        segments = re.split(r"(?<=[\r\n])", text)
        self._partial = (
            segments.pop() if not segments[-1].endswith(("\r", "\n")) else ""
        )
        for segment in segments:
            if segment:
                self._segment(segment)

    def _segment(self, segment: str) -> None:
        body = segment.rstrip("\r\n")
        counter = _COUNTER.match(body) if segment.endswith("\r") else None
        # Whatever comes next is drawn over a counter; only the last one needs
        # its end shown (finish).
        self._counter = (counter["label"], int(counter["total"])) if counter else None
        if segment.endswith("\r") or not self.hold or _GIT_PROGRESS.match(body):
            self._emit(segment)
        elif body.strip() and body.strip() not in self.messages:
            self.messages.append(body.strip())

    def finish(self) -> None:
        """The transfer is over: end the last counter shown on its final count."""
        if self._partial:
            self._segment(self._partial + "\n")
            self._partial = ""
        if self._counter is not None:
            label, total = self._counter
            self._counter = None
            self._emit(f"{label}: {total}/{total}, done.\n")

    def release(self, used: Set[str] = frozenset()) -> None:
        """Pass on the held server messages that no outcome took up."""
        for line in self.messages:
            if line not in used:
                self._emit(f"remote: {line}\n")
        self.messages = []

    def _emit(self, text: str) -> None:
        if self.sink is not None:
            self.sink(text)


def _mentions(line: str, run: RunRef) -> bool:
    """Whether a server line names the run's branch (not a longer one)."""
    pattern = rf"(?<![\w.-])runs/{re.escape(run.path)}(?![\w./-])"
    return re.search(pattern, line) is not None


def _with_server_text(
    outcomes: list[RefOutcome], refused: Set[bytes], messages: Sequence[str]
) -> tuple[list[RefOutcome], set[str]]:
    """Give each ref the server refused the lines the server printed about it.

    Lines naming a run go to that run; lines naming none (a hook's ``policy:
    frozen by admin``) go to every refused ref, since the server gave no other
    way to tell whose they are. A line that only restates the server's reason
    (``error: hook declined to update <ref>``) is dropped. A ref that a
    pre-receive hook refused without a word, while it named other refs, was
    refused with the rest of the push, as pre-receive decides for all at once.

    Returns:
        The outcomes, and the lines they took up.
    """
    named = {
        o.ref: [line for line in messages if _mentions(line, o.run)] for o in outcomes
    }
    claimed = {line for lines in named.values() for line in lines}
    general = [line for line in messages if line not in claimed]
    used: set[str] = set()
    result = []
    for outcome in outcomes:
        if outcome.ref not in refused:
            result.append(outcome)
            continue
        own = [
            line
            for line in named[outcome.ref]
            if not (outcome.message and outcome.message in line)
        ]
        used.update(named[outcome.ref], general)
        result.append(replace(outcome, remote_text=tuple(own + general)))

    spoken = any(o.remote_text for o in result)
    for i, outcome in enumerate(result):
        silent = outcome.ref in refused and not outcome.remote_text
        if spoken and silent and outcome.message == _PRE_RECEIVE_DECLINED:
            message = f"{outcome.message}, with the rest of the push"
            result[i] = replace(outcome, message=message)
    return result, used


# -- commit graph -----------------------------------------------------------


def _is_ancestor(repo: BaseRepo, ancestor: bytes, descendant: bytes) -> bool | None:
    """Whether ``ancestor`` is reachable from ``descendant``; None if unknown.

    Unknown means a commit on the way is missing from this repository (the
    other side has history we never fetched).
    """
    if ancestor == descendant:
        return True
    store = repo.object_store
    if ObjectID(ancestor) not in store:
        return None
    seen = {descendant}
    queue = deque([descendant])
    incomplete = False
    while queue:
        sha = queue.popleft()
        try:
            commit = store[ObjectID(sha)]
        except KeyError:
            incomplete = True
            continue
        if not isinstance(commit, Commit):
            continue
        for parent in commit.parents:
            if parent == ancestor:
                return True
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return None if incomplete else False


def _count_only_in(repo: BaseRepo, tip: bytes, other: bytes) -> int | None:
    """How many commits reachable from ``tip`` are not reachable from ``other``."""
    try:
        walker = repo.get_walker(include=[ObjectID(tip)], exclude=[ObjectID(other)])
        return sum(1 for _ in walker)
    except KeyError:
        return None


def _commits(n: int | None) -> str:
    if n is None:
        return "commits this repository never fetched"
    return f"{n} commit{'s' if n != 1 else ''}"


# -- selecting runs -----------------------------------------------------------


def _wanted(run: RunRef, runs: Sequence[RunRef] | None, project: str | None) -> bool:
    if runs is not None and run not in runs:
        return False
    return project is None or run.project == project


def _run_refs(
    refs: Mapping[Ref, ObjectID | None] | Mapping[Ref, ObjectID],
    runs: Sequence[RunRef] | None,
    project: str | None,
    where: str,
) -> dict[bytes, Sha]:
    """The valid run refs among ``refs`` that the caller selected."""
    selected: dict[bytes, Sha] = {}
    for ref, sha in refs.items():
        if not ref.startswith(RUNS_PREFIX) or sha is None or ref.endswith(b"^{}"):
            continue
        try:
            run = RunRef.from_ref(ref)
        except GitRunsError:
            shown = ref.decode(errors="replace")
            logger.warning("ignoring %s in %s: not a valid run ref", shown, where)
            continue
        if _wanted(run, runs, project):
            selected[ref] = Sha(sha)
    return selected


def _check_selection(
    found: Mapping[bytes, Sha],
    runs: Sequence[RunRef] | None,
    where: str,
    fix: str = "",
) -> None:
    for run in runs or ():
        if run.ref not in found:
            raise RunNotFoundError(run.path, where, fix)


def check_outcomes(outcomes: Sequence[RefOutcome], action: str) -> None:
    """Raise for the refs that a push or pull refused; do nothing if none was.

    Args:
        outcomes: what :func:`push` or :func:`pull` returned.
        action: what was done, for the message (``push to origin (url)``).

    Raises:
        DivergedError: the one refused run has diverged.
        RemoteError: one run was refused otherwise, or several were (then
            one line per run).
    """
    errors = [e for e in (o.error(action) for o in outcomes) if e is not None]
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    # One line per refused run, each with its own cause and what to do.
    raise RemoteError("\n".join(str(error) for error in errors))


# -- push ---------------------------------------------------------------------


def push(
    repo: BaseRepo,
    remote: str = "origin",
    runs: Sequence[RunRef] | None = None,
    *,
    project: str | None = None,
    force: bool = False,
    atomic: bool = False,
    progress: Progress | None = None,
    ssh_command: str | None = None,
    check: bool = True,
    verify: bool = True,
) -> list[RefOutcome]:
    """Push run branches, and only run branches, to a remote.

    Args:
        repo: the local repository.
        remote: a remote name from the repository's Git config, or a URL.
        runs: push only these runs; None pushes every run (of ``project``).
        project: push only the runs of this project.
        force: replace remote runs that are not ancestors of the local ones.
        atomic: ask the server to accept all refs or none.
        progress: gets the transfer's progress text.
        ssh_command: the ssh program for ``ssh://`` URLs (``GIT_SSH_COMMAND``).
        check: raise when the server or the fast-forward rule refused a ref.
        verify: run the pre-push checks first when the repository has the
            gitruns pre-push hook installed, as ``git push`` would.

    Returns:
        One outcome per selected run, sorted by ref, as the server reported it.
        A run whose remote tip this repository lacks is fetched after the
        push (into the remote-tracking ref), to tell ``behind`` from
        ``diverged``.

    Raises:
        RunNotFoundError: a named run does not exist locally.
        DivergedError: the one refused run has diverged (with ``check``).
        RemoteError: the push failed, or refused runs (with ``check``).
    """
    if project is not None:
        check_name("project", project)
    target = resolve_remote(repo, remote, push=True)
    local = _run_refs(dict(repo.get_refs()), runs, project, "this repository")
    _check_selection(local, runs, "this repository")
    if not local:
        logger.info("no runs to push to %s", target)
        return []
    client, path = _client(repo, target, "push", ssh_command)
    tap = _ProgressTap(progress, hold=True)
    planned: dict[bytes, RefOutcome] = {}
    checker = _pre_push_checker(repo, target) if verify else None

    def update_refs(remote_refs: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
        planned.clear()
        sending: dict[Ref, ObjectID] = {}
        for ref, sha in sorted(local.items()):
            outcome = _plan_push(
                repo, ref, remote_refs.get(Ref(ref)), sha, force, target.command_name
            )
            planned[ref] = outcome
            if outcome.status in _MOVING_STATUSES:
                sending[Ref(ref)] = ObjectID(sha)
        if checker is not None:
            _verify(checker, planned, sending)
        return sending

    def generate_pack_data(
        have: Set[ObjectID],
        want: Set[ObjectID],
        *,
        ofs_delta: bool = False,
        progress: Callable[..., None] | None = None,
    ) -> tuple[int, Iterator[Any]]:
        # This side's counting goes to the tap as local text, not as the server's.
        count, records = repo.generate_pack_data(
            set(have), set(want), progress=_text_of(tap.local), ofs_delta=ofs_delta
        )
        return count, _counting(records, count, tap)

    try:
        with remote_errors(str(target), f"pushing to {target}"), _graph_walks(repo):
            result = client.send_pack(
                path.encode(),
                update_refs,
                generate_pack_data,
                progress=tap,
                atomic=atomic,
            )
    except RemoteError as exc:
        # What the server said before it failed is part of why.
        tap.finish()
        if not tap.messages:
            raise
        said = "; ".join(tap.messages)
        raise RemoteError(f"{exc} (remote: {said})") from exc
    tap.finish()

    outcomes = [_reported(outcome, result.ref_status) for outcome in planned.values()]
    refused = {ref for ref, why in (result.ref_status or {}).items() if why}
    outcomes, used = _with_server_text(outcomes, refused, tap.messages)
    tap.release(used)
    _remember_pushed(repo, target, outcomes)
    outcomes = _compare_unfetched(repo, remote, outcomes, ssh_command)
    # INFO even for refusals: the caller gets each one as an outcome or error,
    # and an unconfigured logging module must not print them a second time.
    for outcome in outcomes:
        logger.info("push to %s: %s", target, outcome)
    if check:
        check_outcomes(outcomes, f"push to {target}")
    return outcomes


def _text_of(sink: Callable[[str], None]) -> Callable[[bytes | str], None]:
    def call(data: bytes | str) -> None:
        sink(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)

    return call


def _compare_unfetched(
    repo: BaseRepo,
    remote: str,
    outcomes: list[RefOutcome],
    ssh_command: str | None,
) -> list[RefOutcome]:
    """Fetch the remote tips this repository lacks, to tell behind from diverged.

    The push left those refs alone; what the remote has decides whether this
    run only lags behind it or has commits of its own as well.
    """
    store = repo.object_store
    unknown = [
        o
        for o in outcomes
        if o.status == "behind" and o.old is not None and ObjectID(o.old) not in store
    ]
    if not unknown:
        return outcomes
    try:
        _fetched, _target, offered = _fetch(
            repo, remote, [o.run for o in unknown], None, None, ssh_command
        )
    except GitRunsError as exc:
        logger.info("could not fetch %s to compare: %s", remote, exc)
        return outcomes

    compared = {}
    for outcome in unknown:
        theirs = offered.get(outcome.ref)
        if outcome.new is None or theirs is None or ObjectID(theirs) not in store:
            continue
        again = _plan_push(
            repo, outcome.ref, theirs, outcome.new, False, mask_credentials(remote)
        )
        if again.status in ("behind", "diverged"):
            compared[outcome.ref] = again
    return [compared.get(o.ref, o) for o in outcomes]


def _pre_push_checker(repo: BaseRepo, target: Remote) -> hooks.Checker | None:
    if not isinstance(repo, Repo) or not hooks.installed(repo, "pre-push"):
        return None
    return hooks.client_checker(
        repo, target.name, allow_rewrite=hooks.rewrites_allowed(repo)
    )


def _verify(
    checker: hooks.Checker,
    planned: dict[bytes, RefOutcome],
    sending: dict[Ref, ObjectID],
) -> None:
    """Drop the refs the pre-push checks refuse; nothing of them is sent."""
    updates = [
        hooks.RefUpdate(ref, planned[ref].old, planned[ref].new) for ref in sending
    ]
    for rejection in checker.check(updates):
        before = planned[rejection.ref]
        at = rejection.commit[:10].decode() if rejection.commit else "-"
        planned[rejection.ref] = RefOutcome(
            before.ref,
            "rejected",
            before.old,
            before.new,
            f"pre-push check at {at}: {rejection.reason}",
            side="remote",
            commit=rejection.commit,
            advice="fix the run and push again (nothing of it was sent; "
            "--no-verify skips this check, but a guarded server runs the same)",
        )
        del sending[Ref(rejection.ref)]


def _remember_pushed(
    repo: BaseRepo, target: Remote, outcomes: Sequence[RefOutcome]
) -> None:
    """Point remote-tracking refs at what the remote now has, as ``git push`` does.

    The pre-push hook reads them to know which commits the remote holds.
    """
    for outcome in outcomes:
        tracking = target.tracking_ref(outcome.ref)
        if tracking is None or not outcome.ok or outcome.new is None:
            continue
        if _read_ref(repo, tracking) != outcome.new:
            message = f"gitruns push {target.name}: {outcome.status}".encode()
            repo.refs.set_if_equals(
                Ref(tracking), None, ObjectID(outcome.new), message=message
            )


def _diverged_advice(ref: bytes, remote: str) -> str:
    """How to settle a run both sides logged on: take one side, by name."""
    run = RunRef.from_ref(ref).path
    return (
        f"take the remote's with `gitruns pull --force {remote} {run}` (it names "
        "the local commit it replaces, which Git keeps for you to branch from), "
        f"or replace the remote's with yours: `gitruns push --force {remote} {run}`"
    )


def _plan_push(
    repo: BaseRepo,
    ref: bytes,
    theirs: bytes | None,
    ours: Sha,
    force: bool,
    remote: str = "REMOTE",
) -> RefOutcome:
    """What a push of ``ours`` over the remote's ``theirs`` will do."""
    old = Sha(theirs) if theirs is not None else None

    def outcome(status: str, message: str = "", advice: str = "") -> RefOutcome:
        return RefOutcome(ref, status, old, ours, message, side="remote", advice=advice)

    if old is None:
        return outcome("created")
    if old == ours:
        return outcome("up to date")
    if _is_ancestor(repo, old, ours):
        return outcome("fast-forward")

    known = ObjectID(old) in repo.object_store
    only_theirs = _count_only_in(repo, old, ours) if known else None
    if force:
        return outcome(
            "forced",
            f"replaced {old[:10].decode()}, dropping {_commits(only_theirs)} "
            "from the remote branch",
        )
    if not known:
        # Told apart from diverged once the push is over (_compare_unfetched).
        return outcome(
            "behind",
            "the remote has commits this repository has not fetched",
            "pull first (`gitruns pull`)",
        )
    if _is_ancestor(repo, ours, old):
        return outcome(
            "behind",
            f"the remote has {_commits(only_theirs)} this run lacks, and this run "
            "has none of its own",
            "pull first (`gitruns pull`)",
        )
    only_ours = _count_only_in(repo, ours, old)
    return outcome(
        "diverged",
        f"both sides logged after their common commit ({_commits(only_theirs)} "
        f"only on the remote, {_commits(only_ours)} only here)",
        _diverged_advice(ref, remote),
    )


#: git's reason for every ref of a push its pre-receive hook refused.
_PRE_RECEIVE_DECLINED = "pre-receive hook declined"

#: Server reasons that mean the remote branch moved between our look and the push.
_MOVED = ("non-fast-forward", "fetch first", "stale info")


def _reported(
    planned: RefOutcome, ref_status: Mapping[bytes, str | None] | None
) -> RefOutcome:
    """The planned outcome as the server's report-status turned it out."""
    if planned.status not in _MOVING_STATUSES:
        return planned
    refusal = (ref_status or {}).get(planned.ref)
    if refusal is None:
        return planned

    if "hook" in refusal:
        advice = (
            "the server's hooks decide what it accepts: fix what they say, or ask "
            "the server's admin"
        )
    elif any(reason in refusal for reason in _MOVED):
        advice = "the remote run moved during the push: pull, then push again"
    else:
        advice = "the server decides what it accepts: see its reason"
    return RefOutcome(
        planned.ref,
        "rejected",
        planned.old,
        planned.new,
        refusal,
        side="remote",
        advice=advice,
    )


def _counting(records: Iterator[Any], total: int, tap: _ProgressTap) -> Iterator[Any]:
    """Yield pack records, reporting objects and bytes written as they go."""
    if total == 0:
        yield from records
        return
    size = 0
    shown = -1
    for done, record in enumerate(records, 1):
        size += int(getattr(record, "decomp_len", 0) or 0)
        percent = done * 100 // total
        if percent != shown:
            shown = percent
            end = "\n" if done == total else "\r"
            tap.local(
                f"Writing objects: {percent}% ({done}/{total}), {_size(size)}{end}"
            )
        yield record


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.2f} MiB"


# -- fetch and pull -------------------------------------------------------------


def fetch(
    repo: BaseRepo,
    remote: str = "origin",
    runs: Sequence[RunRef] | None = None,
    *,
    project: str | None = None,
    progress: Progress | None = None,
    ssh_command: str | None = None,
) -> list[RefOutcome]:
    """Fetch run branches into ``refs/remotes/<remote>/runs/...``.

    Local run branches are not touched; :func:`pull` moves them. Fetching from
    a bare URL stores the objects but writes no remote-tracking refs, as git
    does.

    Args:
        repo: the local repository.
        remote: a remote name from the repository's Git config, or a URL.
        runs: fetch only these runs; None fetches every run (of ``project``).
        project: fetch only the runs of this project.
        progress: gets the transfer's progress text.
        ssh_command: the ssh program for ``ssh://`` URLs.

    Returns:
        One outcome per fetched run: its remote-tracking ref ``new``,
        ``updated``, ``forced`` (the remote's branch was rewritten) or
        ``up to date``; ``rejected`` for a run the remote could not send
        (a path remote lacking an object it names), the others fetched.

    Raises:
        RunNotFoundError: a named run is not on the remote.
        RemoteError: the fetch failed.
    """
    outcomes, _target, _refs = _fetch(
        repo, remote, runs, project, progress, ssh_command
    )
    return outcomes


def _fetch(
    repo: BaseRepo,
    remote: str,
    runs: Sequence[RunRef] | None,
    project: str | None,
    progress: Progress | None,
    ssh_command: str | None,
) -> tuple[list[RefOutcome], Remote, dict[bytes, Sha]]:
    if project is not None:
        check_name("project", project)
    target = resolve_remote(repo, remote)
    client, path = _client(repo, target, "pull", ssh_command)
    tap = _ProgressTap(progress)
    offered: dict[bytes, Sha] = {}

    def determine_wants(
        refs: Mapping[Ref, ObjectID | None], depth: int | None = None
    ) -> list[ObjectID]:
        offered.clear()
        offered.update(_run_refs(refs, runs, project, str(target)))
        store = repo.object_store
        return sorted(
            {ObjectID(s) for s in offered.values() if ObjectID(s) not in store}
        )

    def fetch_wanted(wants: Callable[..., list[ObjectID]]) -> None:
        with (
            _missing_objects(target),
            _graph_walks(repo),
            remote_errors(str(target), f"fetching from {target}"),
        ):
            client.fetch(
                path.encode(),
                repo,
                determine_wants=wants,
                progress=tap,
                ref_prefix=[RUNS_PREFIX],
            )

    failed: dict[bytes, str] = {}
    try:
        fetch_wanted(determine_wants)
    except _MissingObject:
        if len(offered) < 2:
            raise
        # One run the remote cannot send must not keep the others: fetch
        # them one at a time, and report the ones that fail.
        for ref, sha in sorted(offered.items()):
            try:
                fetch_wanted(_only(ObjectID(sha), repo))
            except _MissingObject as exc:
                failed[ref] = str(exc)
        if len(failed) == len(offered):
            raise
    tap.finish()
    _check_selection(
        offered,
        runs,
        str(target),
        f"`git ls-remote {shlex.quote(target.command_name)} 'refs/heads/runs/*'` "
        "lists the runs there",
    )

    outcomes = []
    for ref, sha in sorted(offered.items()):
        if ref in failed:
            outcomes.append(_unfetched(ref, sha, failed[ref]))
            continue
        tracking = target.tracking_ref(ref)
        if tracking is None:
            outcomes.append(RefOutcome(ref, "new", None, sha, "fetched, not tracked"))
            continue
        outcomes.append(_track(repo, target, ref, tracking, sha))
    for outcome in outcomes:
        if outcome.status != "up to date":
            logger.info("fetch from %s: %s", target, outcome)
    return outcomes, target, offered


def _only(sha: ObjectID, repo: BaseRepo) -> Callable[..., list[ObjectID]]:
    """A determine_wants that asks for one commit, unless it is here already."""

    def wants(
        refs: Mapping[Ref, ObjectID | None], depth: int | None = None
    ) -> list[ObjectID]:
        return [] if sha in repo.object_store else [sha]

    return wants


class _MissingObject(RemoteError):
    """A path remote lacks an object that one of its runs names."""


@contextmanager
def _missing_objects(target: Remote) -> Iterator[None]:
    """Map dulwich's KeyError for an object a path remote lacks; others pass.

    dulwich's local client reads the remote repository itself and raises
    KeyError(<sha>) for an object that is not there.
    """
    try:
        yield
    except KeyError as exc:
        missing = exc.args[0] if exc.args else None
        if not (isinstance(missing, bytes) and re.fullmatch(rb"[0-9a-f]{40}", missing)):
            raise
        raise _MissingObject(
            f"fetching from {target} failed: the remote repository lacks object "
            f"{missing.decode()}, which its runs name; run `git fsck` there"
        ) from exc


def _unfetched(ref: bytes, sha: Sha, why: str) -> RefOutcome:
    """A run the remote could not send: reported, nothing of it moved."""
    return RefOutcome(
        ref,
        "rejected",
        None,
        sha,
        why,
        advice="the local run is unchanged and the other runs were fetched; have "
        "the remote repository repaired",
    )


def _read_ref(repo: BaseRepo, ref: bytes) -> Sha | None:
    try:
        return Sha(repo.refs[Ref(ref)])
    except KeyError:
        return None


def _track(
    repo: BaseRepo, target: Remote, ref: bytes, tracking: bytes, sha: Sha
) -> RefOutcome:
    """Point the remote-tracking ref at ``sha``, as a ``+`` refspec would."""
    refs = repo.refs
    old = _read_ref(repo, tracking)
    message = f"gitruns fetch {target.name}".encode()
    if old == sha:
        return RefOutcome(ref, "up to date", old, sha)
    if old is None:
        refs.add_if_new(Ref(tracking), ObjectID(sha), message=message)
        return RefOutcome(ref, "new", None, sha)
    refs.set_if_equals(Ref(tracking), ObjectID(old), ObjectID(sha), message=message)
    if _is_ancestor(repo, old, sha):
        return RefOutcome(ref, "updated", old, sha)
    return RefOutcome(
        ref, "forced", old, sha, "the remote's branch was rewritten since last fetch"
    )


def pull(
    repo: BaseRepo,
    remote: str = "origin",
    runs: Sequence[RunRef] | None = None,
    *,
    project: str | None = None,
    progress: Progress | None = None,
    ssh_command: str | None = None,
    check: bool = True,
    force: bool = False,
) -> list[RefOutcome]:
    """Fetch run branches, then fast-forward local runs and create missing ones.

    Before any local branch moves, the commits a pull would add to it get the
    checks of the pre-receive hook (:func:`gitruns.hooks.pull_checker`): run
    names, run.json, every new chunk decoded, step order, no rewritten segment.
    A run that fails them is ``rejected`` and left as it is, and so is a run
    that diverged (both sides logged after a common commit); a local run ahead
    of the remote is kept. The other runs are updated either way.

    Args:
        repo: the local repository.
        remote: a remote name from the repository's Git config, or a URL.
        runs: pull only these runs; None pulls every run (of ``project``).
        project: pull only the runs of this project.
        progress: gets the transfer's progress text.
        ssh_command: the ssh program for ``ssh://`` URLs.
        check: raise if a run was refused or diverged, after updating the others.
        force: replace a local run that diverged with the remote's (``forced``,
            naming the local commit it replaced); its whole history is checked
            as a new run's would be.

    Returns:
        One outcome per remote run: ``created``, ``fast-forward``, ``forced``,
        ``up to date``, ``ahead``, ``diverged`` or ``rejected`` (with the
        commit that failed the checks and why).

    Raises:
        RunNotFoundError: a named run is not on the remote.
        DivergedError: the one run that diverged (with ``check``).
        RemoteError: the fetch failed, or runs were refused (with ``check``).
    """
    fetched, target, remote_refs = _fetch(
        repo, remote, runs, project, progress, ssh_command
    )
    unfetched = {o.ref: o for o in fetched if o.status == "rejected"}
    planned = [
        unfetched.get(ref) or _plan_pull(repo, target, ref, sha, force)
        for ref, sha in sorted(remote_refs.items())
    ]

    # Every check runs before any branch moves: the checker counts as accepted
    # only what the local run branches reached before this pull. A forced run
    # is checked as a new one: none of the remote's line is accepted yet.
    moving = {o.ref: o for o in planned if o.status in _MOVING_STATUSES}
    checker = hooks.pull_checker(repo)
    updates = [
        hooks.RefUpdate(o.ref, None if o.status == "forced" else o.old, o.new)
        for o in moving.values()
    ]
    refusals = {rejection.ref: rejection for rejection in checker.check(updates)}
    outcomes = []
    for outcome in planned:
        if outcome.ref in refusals:
            outcome = _refused_pull(outcome, refusals[outcome.ref], target)
        elif outcome.ref in moving:
            outcome = _move(repo, target, outcome)
        outcomes.append(outcome)

    for outcome in outcomes:
        if outcome.status != "up to date":
            logger.info("pull from %s: %s", target, outcome)
    if check:
        check_outcomes(outcomes, f"pull from {target}")
    return outcomes


def _plan_pull(
    repo: BaseRepo, target: Remote, ref: bytes, theirs: Sha, force: bool = False
) -> RefOutcome:
    """What pulling the remote's ``theirs`` into one local run would do."""
    ours = _read_ref(repo, ref)
    if ours is None:
        return RefOutcome(ref, "created", None, theirs)
    if ours == theirs:
        return RefOutcome(ref, "up to date", ours, theirs)
    if _is_ancestor(repo, ours, theirs):
        return RefOutcome(ref, "fast-forward", ours, theirs)
    if _is_ancestor(repo, theirs, ours):
        ahead = _count_only_in(repo, ours, theirs)
        return RefOutcome(
            ref,
            "ahead",
            ours,
            ours,
            f"{_commits(ahead)} not on the remote yet; push them",
        )
    if force:
        return RefOutcome(
            ref,
            "forced",
            ours,
            theirs,
            f"replaced local {ours[:10].decode()}, dropping "
            f"{_commits(_count_only_in(repo, ours, theirs))} from the run "
            f"(`{git_command(repo)} branch keep-{ours[:7].decode()} "
            f"{ours[:10].decode()}` keeps them)",
        )
    tracking = target.tracking_ref(ref)
    # A URL has no remote-tracking refs; its commits were fetched all the same.
    where = tracking.decode() if tracking else f"commit {theirs[:10].decode()}"
    return RefOutcome(
        ref,
        "diverged",
        ours,
        theirs,
        f"both sides logged after their common commit; local {ours[:10].decode()} "
        f"kept, the remote's is {where}",
        advice=f"the local run is unchanged and the remote's is {where}: "
        + _diverged_advice(ref, target.command_name),
    )


def _refused_pull(
    planned: RefOutcome, rejection: hooks.Rejection, target: Remote
) -> RefOutcome:
    """A run whose fetched commits failed the checks: reported, not moved."""
    at = rejection.commit[:10].decode() if rejection.commit else "-"
    tracking = target.tracking_ref(planned.ref)
    kept = f"; the remote's commits are at {tracking.decode()}" if tracking else ""
    return replace(
        planned,
        status="rejected",
        message=f"commit {at} fails the checks: {rejection.reason}",
        commit=rejection.commit,
        advice="the local run is unchanged; have the run fixed where it was "
        f"written, and do not use the remote's copy{kept}",
    )


def _move(repo: BaseRepo, target: Remote, planned: RefOutcome) -> RefOutcome:
    """Create or fast-forward one local run, by compare-and-swap."""
    refs = repo.refs
    ref, ours, theirs = planned.ref, planned.old, planned.new
    if theirs is None:
        return replace(
            planned,
            status="rejected",
            message="the remote offered no commit for the run",
            advice="fetch again and check the remote's branch",
        )
    message = f"gitruns pull {target.name or 'URL'}: {planned.status}".encode()

    if ours is None:
        if refs.add_if_new(Ref(ref), ObjectID(theirs), message=message):
            return planned
        return replace(
            planned,
            status="rejected",
            message="the run appeared locally during the pull",
            advice="pull again",
        )
    if refs.set_if_equals(Ref(ref), ObjectID(ours), ObjectID(theirs), message=message):
        return planned
    return replace(
        planned,
        status="rejected",
        message="the run moved locally during the pull",
        advice="pull again",
    )
