"""Real Git servers on loopback for tests: git daemon, git http-backend, sshd."""

from __future__ import annotations

import base64
import contextlib
import getpass
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, cast

import pytest

#: What every git process in the tests sees instead of the user's own setup.
SCRUBBED_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "gitruns tests",
    "GIT_AUTHOR_EMAIL": "tests@gitruns.invalid",
    "GIT_COMMITTER_NAME": "gitruns tests",
    "GIT_COMMITTER_EMAIL": "tests@gitruns.invalid",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
}

#: Variables that would point a git process at some other repository.
_LEAKY_GIT_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_PROTOCOL",
    "GITRUNS_REPO",
)

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def scrubbed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of os.environ with the user's git config scrubbed out."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_GIT_VARS}
    env.update(SCRUBBED_GIT_ENV)
    if extra:
        env.update(extra)
    return env


def git(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``git`` with a scrubbed environment and capture its output.

    Raises:
        AssertionError: if ``check`` and git exits non-zero, with its stderr.
    """
    proc = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env=scrubbed_env(),
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, alive: threading.Event | subprocess.Popen[bytes]) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if isinstance(alive, subprocess.Popen) and alive.poll() is not None:
            raise RuntimeError(
                f"server exited with {alive.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} in {_START_TIMEOUT}s")


@dataclass
class GitServer:
    """A directory of bare repositories served under one URL root.

    Attributes:
        base: the directory the server exports.
        url_root: ``git://127.0.0.1:<port>`` or ``http://127.0.0.1:<port>``.
        kind: ``"git"`` or ``"http"``.
        log: the server's stderr, for failure messages.
    """

    base: Path
    url_root: str
    kind: str
    log: Path

    def create(self, name: str = "runs.git") -> Path:
        """Create an empty bare repository that accepts pushes; return its path."""
        path = self.base / name
        git("init", "--quiet", "--bare", path)
        # http-backend refuses receive-pack without this (or an authenticated user).
        git("config", "http.receivepack", "true", cwd=path)
        return path

    def url(self, name: str = "runs.git") -> str:
        """Return the URL a client pushes to for repository ``name``."""
        return f"{self.url_root}/{name}"

    def server_log(self) -> str:
        """Return what the server wrote to stderr so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class GitDaemon:
    """``git daemon`` with receive-pack enabled, in its own process group."""

    def __init__(self, base: Path, log: Path) -> None:
        self.base = base
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> GitServer:
        """Start the daemon on a free port and wait until it listens."""
        self.base.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None

        # Another process may take the free port between probe and bind: retry.
        for _ in range(3):
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        "git",
                        "daemon",
                        "--reuseaddr",
                        "--listen=127.0.0.1",
                        f"--port={self.port}",
                        f"--base-path={self.base}",
                        "--export-all",
                        "--enable=receive-pack",
                        "--informative-errors",
                        str(self.base),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=scrubbed_env(),
                    # A group of its own, so stop() also reaches forked children.
                    start_new_session=True,
                )
            try:
                _wait_for_port(self.port, self.proc)
            except RuntimeError as exc:
                last = exc
                self.stop()
                continue
            return GitServer(self.base, f"git://127.0.0.1:{self.port}", "git", self.log)
        raise RuntimeError(f"git daemon did not start: {last}\n{self.log.read_text()}")

    def stop(self) -> None:
        """Stop the daemon and every process it forked."""
        if self.proc is None:
            return
        _kill_group(self.proc)
        self.proc = None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a session leader's whole process group, then reap the leader."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=_STOP_TIMEOUT)

    # Children of the leader (a receive-pack mid-push) may outlive it briefly.
    deadline = time.monotonic() + _STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)
    raise RuntimeError(f"processes of group {pgid} survived SIGKILL")


@dataclass
class _BackendConfig:
    project_root: Path
    log: Path
    auth: tuple[str, str] | None = None
    children: set[subprocess.Popen[bytes]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _CGIHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as a CGI program for every request."""

    protocol_version = "HTTP/1.1"
    server: _HttpBackendServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._run_backend()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._run_backend()

    def log_message(self, format: str, *args: object) -> None:
        with open(self.server.config.log, "a") as log:
            log.write(f"http: {format % args}\n")

    def _authorized_user(self) -> str | None:
        auth = self.server.config.auth
        if auth is None:
            return "gitruns-test"
        expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if self.headers.get("Authorization", "") == f"Basic {expected}":
            return auth[0]
        return None

    def _run_backend(self) -> None:
        user = self._authorized_user()
        if user is None:
            self._drain_body()
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="gitruns tests"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        path, _, query = self.path.partition("?")
        env = scrubbed_env(
            {
                "GIT_PROJECT_ROOT": str(self.server.config.project_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REMOTE_USER": user,
                "REMOTE_ADDR": self.client_address[0],
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": self.request_version,
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            }
        )
        for name, value in self.headers.items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = self.headers.get("Content-Length")
        # With a chunked body the length is unknown: http-backend reads to EOF.
        if length is not None and not chunked:
            env["CONTENT_LENGTH"] = length

        with open(self.server.config.log, "ab") as log:
            proc = subprocess.Popen(
                ["git", "http-backend"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        with self.server.config.lock:
            self.server.config.children.add(proc)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            # Feed the body from a thread: the backend may answer before EOF.
            feeder = threading.Thread(
                target=self._feed_body, args=(proc.stdin, chunked, length), daemon=True
            )
            feeder.start()
            self._relay_response(cast(io.BufferedReader, proc.stdout))
            feeder.join()
            proc.wait()
        finally:
            with self.server.config.lock:
                self.server.config.children.discard(proc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _drain_body(self) -> None:
        sink = open(os.devnull, "wb")  # noqa: SIM115 - closed below
        try:
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            self._copy_body(sink, chunked, self.headers.get("Content-Length"))
        finally:
            sink.close()

    def _feed_body(self, stdin: IO[bytes], chunked: bool, length: str | None) -> None:
        try:
            self._copy_body(stdin, chunked, length)
        except BrokenPipeError:
            pass  # the backend stopped reading; its answer says why
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def _copy_body(self, out: IO[bytes], chunked: bool, length: str | None) -> None:
        if chunked:
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                out.write(self.rfile.read(size))
                self.rfile.readline()
        remaining = int(length or 0)
        while remaining > 0:
            block = self.rfile.read(min(remaining, 1 << 16))
            if not block:
                return
            out.write(block)
            remaining -= len(block)

    def _relay_response(self, stdout: io.BufferedReader) -> None:
        # CGI headers first: "Status:" becomes the status line.
        status = 200
        reason = "OK"
        headers: list[tuple[str, str]] = []
        while True:
            line = stdout.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                status = int(code)
            else:
                headers.append((name, value))

        self.send_response(status, reason or None)
        has_length = any(name.lower() == "content-length" for name, _ in headers)
        for name, value in headers:
            self.send_header(name, value)
        if not has_length:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        while True:
            block = stdout.read1(1 << 16)
            if not block:
                break
            if has_length:
                self.wfile.write(block)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        if not has_length:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _HttpBackendServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, port: int, config: _BackendConfig) -> None:
        self.config = config
        super().__init__(("127.0.0.1", port), _CGIHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing a kept-alive connection is normal; log the rest.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return
        with open(self.config.log, "a") as log:
            log.write(f"http: error serving {client_address}:\n")
            traceback.print_exc(file=log)


class HttpBackend:
    """Smart HTTP: a threaded CGI server in this process running git http-backend."""

    def __init__(
        self, base: Path, log: Path, auth: tuple[str, str] | None = None
    ) -> None:
        self.config = _BackendConfig(base, log, auth)
        self.server: _HttpBackendServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> GitServer:
        """Bind a free port, serve in a thread, and wait until it answers."""
        self.config.project_root.mkdir(parents=True, exist_ok=True)
        self.server = _HttpBackendServer(0, self.config)
        port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"git-http-backend:{port}",
            daemon=True,
        )
        self.thread.start()
        ready = threading.Event()
        ready.set()
        _wait_for_port(port, ready)
        return GitServer(
            self.config.project_root,
            f"http://127.0.0.1:{port}",
            "http",
            self.config.log,
        )

    def stop(self) -> None:
        """Stop serving, wait for requests in flight and their backends."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        assert self.thread is not None
        self.thread.join(_STOP_TIMEOUT)
        with self.config.lock:
            left = list(self.config.children)
        for proc in left:
            proc.kill()
            proc.wait()
        self.server = None


#: Where Debian's openssh-server puts the daemon; the ssh tests skip without it.
SSHD = Path("/usr/sbin/sshd")

_SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PrintMotd no
AcceptEnv GIT_PROTOCOL
SetEnv GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
LogLevel ERROR
"""


@dataclass
class SshServer:
    """Bare repositories reached over a real sshd on loopback, key login only.

    Attributes:
        base: the directory the repositories are created in.
        port: the port sshd listens on, on 127.0.0.1.
        user: who logs in (the user running the tests).
        ssh_command: the ssh client with this server's key and known host,
            for ``ssh_command=`` or ``GIT_SSH_COMMAND``.
        log: sshd's stderr, for failure messages.
    """

    base: Path
    port: int
    user: str
    ssh_command: str
    log: Path

    def create(self, name: str = "runs.git") -> Path:
        """Create an empty bare repository; return its path."""
        path = self.base / name
        git("init", "--quiet", "--bare", path)
        return path

    def url(self, name: str = "runs.git") -> str:
        """The ``ssh://`` URL of repository ``name``."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.base / name}"


def sshd_unusable() -> str | None:
    """Why no throwaway sshd can run here, or None if one can."""
    if not SSHD.exists():
        return (
            f"{SSHD} is absent: `apt-get install openssh-server` to run the "
            "ssh:// tests against a real sshd"
        )
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH: install openssh-client"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        return "sshd run as root needs its privilege separation dir: mkdir /run/sshd"
    return None


class Sshd:
    """A throwaway sshd as the current user: own host key, one authorized key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SshServer:
        """Make the keys and config, start sshd on a free port, wait for it."""
        reason = sshd_unusable()
        if reason is not None:
            raise RuntimeError(reason)
        keys = self.root / "keys"
        keys.mkdir(parents=True)
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name],
                check=True,
                env=scrubbed_env(),
            )
        (keys / "authorized_keys").write_bytes((keys / "client.pub").read_bytes())
        base = self.root / "repos"
        base.mkdir()
        log = self.root / "sshd.log"
        user = getpass.getuser()
        host_key = (keys / "host.pub").read_text().split()
        last: Exception | None = None

        # Another process may take the free port between probe and bind: retry.
        for _ in range(3):
            port = free_port()
            config = self.root / "sshd_config"
            config.write_text(
                _SSHD_CONFIG.format(
                    port=port,
                    host_key=keys / "host",
                    pid_file=self.root / "sshd.pid",
                    authorized_keys=keys / "authorized_keys",
                    user=user,
                )
            )
            known_hosts = keys / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
            with open(log, "ab") as err:
                self.proc = subprocess.Popen(
                    [str(SSHD), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=scrubbed_env(),
                    start_new_session=True,
                )
            try:
                _wait_for_port(port, self.proc)
            except RuntimeError as exc:
                last = exc
                self.stop()
                continue
            command = shlex.join(
                [
                    "ssh",
                    "-F",
                    os.devnull,
                    "-i",
                    str(keys / "client"),
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "IdentityAgent=none",
                    "-o",
                    f"UserKnownHostsFile={known_hosts}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "LogLevel=ERROR",
                ]
            )
            return SshServer(base, port, user, command, log)
        raise RuntimeError(f"sshd did not start: {last}\n{log.read_text()}")

    def stop(self) -> None:
        """Stop sshd and every session it forked."""
        if self.proc is None:
            return
        _kill_group(self.proc)
        self.proc = None


@contextlib.contextmanager
def running_daemon(base: Path, log: Path) -> Iterator[GitServer]:
    """Run ``git daemon`` over ``base`` for the duration of the block."""
    daemon = GitDaemon(base, log)
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@contextlib.contextmanager
def running_sshd(root: Path) -> Iterator[SshServer]:
    """Run a throwaway sshd in ``root`` for the duration of the block."""
    sshd = Sshd(root)
    try:
        yield sshd.start()
    finally:
        sshd.stop()


@contextlib.contextmanager
def running_http_backend(
    base: Path, log: Path, auth: tuple[str, str] | None = None
) -> Iterator[GitServer]:
    """Serve ``base`` over smart HTTP for the duration of the block."""
    backend = HttpBackend(base, log, auth)
    try:
        yield backend.start()
    finally:
        backend.stop()


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Scrub the user's git config for this test, in-process and for children."""
    for name in _LEAKY_GIT_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in SCRUBBED_GIT_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(SCRUBBED_GIT_ENV)


@pytest.fixture
def git_daemon(tmp_path: Path, git_env: dict[str, str]) -> Iterator[GitServer]:
    """A ``git daemon`` on loopback that accepts pushes; stopped at teardown."""
    with running_daemon(tmp_path / "daemon", tmp_path / "daemon.log") as server:
        yield server


@pytest.fixture
def http_backend(tmp_path: Path, git_env: dict[str, str]) -> Iterator[GitServer]:
    """``git http-backend`` behind a CGI server on loopback; stopped at teardown."""
    with running_http_backend(tmp_path / "http", tmp_path / "http.log") as server:
        yield server


@pytest.fixture(params=["git-daemon", "http-backend"])
def git_server(
    request: pytest.FixtureRequest, tmp_path: Path, git_env: dict[str, str]
) -> Iterator[GitServer]:
    """Each real server in turn: the test runs once against both."""
    if request.param == "git-daemon":
        with running_daemon(tmp_path / "daemon", tmp_path / "daemon.log") as server:
            yield server
    else:
        with running_http_backend(tmp_path / "http", tmp_path / "http.log") as server:
            yield server
