"""A warm ``diffrecon`` for operators who run many short commands.

``diffrecon daemon`` loads Python, torch, Prefect and every diffrecon module once, keeps one
Prefect server (the configured one, or a temporary one that lives as long as the daemon)
and listens on a Unix socket that only its own user can open. A ``diffrecon`` command run
with ``DIFFRECON_DAEMON=<socket>`` in its environment sends its arguments, working folder and
``DIFFRECON_*`` variables there, prints what the command prints and exits with its exit
code; it starts no Prefect server and imports neither torch nor Prefect. Commands run one
at a time (a second one waits its turn); closing the client (Ctrl-C, a killed shell)
interrupts its command in the daemon as Ctrl-C would, and the daemon serves the next one.
When no daemon listens at the socket the command runs in its own process, with a warning.

This module only imports the standard library at the top: the client side must stay light.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

SOCKET_ENV = "DIFFRECON_DAEMON"
_ENV_PREFIX = "DIFFRECON_"  # the client's variables of this prefix apply to its command


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/diffrecon/daemon.sock`` (a per-user folder), else
    ``~/.cache/diffrecon/daemon.sock``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "diffrecon" / "daemon.sock"


def _client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX) and k != SOCKET_ENV}


def forward(path: str | os.PathLike, argv: list[str]) -> int | None:
    """Run ``diffrecon argv`` in the daemon at ``path``; its exit code, or None when no
    daemon listens there (nothing was run)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(os.fspath(path))
    except OSError:
        conn.close()
        return None
    if _peer_uid(conn) != os.getuid():  # another user's socket: send it nothing
        conn.close()
        raise ValueError(f"{SOCKET_ENV}={path}: the process listening there belongs to "
                         "another user; nothing was sent")
    request = {"argv": argv, "cwd": os.getcwd(), "env": _client_env(),
               "tty": sys.stderr.isatty()}
    with conn:
        conn.sendall(json.dumps(request).encode() + b"\n")
        try:
            for line in conn.makefile("rb"):
                msg = json.loads(line)
                if "rc" in msg:
                    return int(msg["rc"])
                stream = sys.stdout if "out" in msg else sys.stderr
                stream.write(msg.get("out", msg.get("err", "")))
                stream.flush()
        except KeyboardInterrupt:  # closing the socket interrupts the command there
            return 130
    print(f"diffrecon: error: the daemon at {path} stopped during the command (see its log)",
          file=sys.stderr)
    return 1


class _Channel:
    """The client's end: JSON lines, one writer at a time; a gone client drops writes."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.lock, self.gone = conn, threading.Lock(), False

    def send(self, **msg: object) -> None:
        data = json.dumps(msg).encode() + b"\n"
        with self.lock:
            if self.gone:
                return
            try:
                self.conn.sendall(data)
            except OSError:
                self.gone = True


class _Stream(io.TextIOBase):
    """stdout or stderr of one command, sent to its client."""

    def __init__(self, channel: _Channel, key: str, tty: bool) -> None:
        self.channel, self.key, self.tty = channel, key, tty

    def write(self, text: str) -> int:
        if text:
            self.channel.send(**{self.key: text})
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # progress lines show when the client's terminal would
        return self.tty


def _console_handlers() -> list:
    """Prefect's console handlers (their stream was fixed when logging was configured)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    found: list = []
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, PrefectConsoleHandler) and h not in found:
                found.append(h)
    return found


@contextlib.contextmanager
def _as_client(request: dict, out: _Stream, err: _Stream):
    """This process, for one command, as the client's would be: its working folder, its
    ``DIFFRECON_*`` variables, its stdout/stderr (Prefect's console log included, at INFO
    with -v/--verbose); everything restored afterwards (umask included)."""
    env, cwd = dict(os.environ), os.getcwd()
    umask = os.umask(0o077)
    os.umask(umask)
    handlers = [(h, h.stream, h.console.file, h.level) for h in _console_handlers()]
    verbose = any(a in ("-v", "--verbose") for a in request["argv"])
    try:
        for k in [k for k in os.environ if k.startswith(_ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for h, *_ in handlers:
            h.stream = h.console.file = err
            h.setLevel("INFO" if verbose else "WARNING")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for h, stream, file, level in handlers:
            h.stream, h.console.file = stream, file
            h.setLevel(level)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        os.umask(umask)


class _Interrupts:
    """Ctrl-C for the command whose client went away (a watcher thread per command)."""

    def __init__(self) -> None:
        self.lock, self.pending = threading.Lock(), False
        self.current: socket.socket | None = None  # the connection whose command runs

    def watch(self, conn: socket.socket) -> None:
        import _thread

        try:
            while conn.recv(1024):  # the client sends nothing more; b"" = it closed
                pass
        except OSError:
            pass
        # again every half second until the command ends: an interrupt that lands inside
        # Prefect's engine can be absorbed there and the command run on to its end (seen
        # once in CI: the gone client's DDS result was written)
        while True:
            with self.lock:
                if self.current is not conn:  # its own command only, never the next one
                    return
                self.pending = True
                _thread.interrupt_main()
            time.sleep(0.5)


class _Stop(BaseException):
    """SIGTERM: stop the daemon (the running command ends with exit code 143)."""


def _stop(*_: object) -> None:
    raise _Stop


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _warm() -> None:
    """Import everything a command may need now, not during the first command."""
    import importlib
    import pkgutil

    import diffrecon

    for mod in pkgutil.walk_packages(diffrecon.__path__, "diffrecon."):
        try:
            importlib.import_module(mod.name)
        except ImportError:  # an optional extra not installed here (dask_cuda, ...)
            pass
    # MONAI's networks too (the priors build them): a gone client's interrupt that landed
    # in their first import left the module half-initialised, and every later DDS in this
    # daemon failed with "partially initialized module 'monai.networks.nets'"
    for name in ("prefect.flow_engine", "prefect.task_engine", "monai.networks.nets"):
        importlib.import_module(name)
    import torch
    from prefect.client.orchestration import get_client

    from diffrecon.tasks.caching import code_version

    code_version()  # the code this daemon runs, pinned now (commands check it against disk)
    torch.fft.fft2(torch.ones(8, 8, dtype=torch.complex64))  # torch's first-call set-up
    with get_client(sync_client=True) as client:  # the API client and the server's first answer
        client.hello()


def serve(path: str | os.PathLike) -> int:
    """Listen at ``path`` until SIGTERM or Ctrl-C; one command at a time."""
    import signal

    from diffrecon.cli import _temporary_server, run_command

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _listening(path):
        raise ValueError(f"a diffrecon daemon already listens at {path}")
    if path.exists() and not path.is_socket():
        raise ValueError(f"--socket {path}: a file that is not a socket is there; give a new path")
    path.unlink(missing_ok=True)  # left by a daemon that was killed
    _temporary_server()  # Prefect's temporary server, when none is configured, for our life
    _warm()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the socket: 0600, its user only
    try:
        listener.bind(os.fspath(path))
    finally:
        os.umask(umask)
    listener.listen(16)
    signal.signal(signal.SIGTERM, _stop)
    # a gone client interrupts its command as Ctrl-C would, also when SIGINT was ignored
    # when we started (a background job, nohup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts = _Interrupts()
    where = path.absolute()
    print(f"diffrecon daemon: listening on {where} (pid {os.getpid()}); in the shells that "
          f"should use it: export {SOCKET_ENV}={where}", flush=True)
    try:
        while True:
            try:
                conn, _ = listener.accept()
                with conn:
                    if _peer_uid(conn) != os.getuid():  # the file mode already refuses them
                        continue
                    _handle(conn, interrupts, run_command)
            except KeyboardInterrupt:
                with interrupts.lock:
                    pending, interrupts.pending = interrupts.pending, False
                if not pending:  # Ctrl-C at the daemon itself: stop
                    raise
            except Exception as exc:  # one bad connection never stops the daemon
                print(f"diffrecon daemon: a request failed: {type(exc).__name__}", flush=True)
    except KeyboardInterrupt:
        return 130
    except _Stop:
        return 0
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _listening(path: Path) -> bool:
    """Whether a daemon listens at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(os.fspath(path))
        except OSError:
            return False
    return True


def _handle(conn: socket.socket, interrupts: _Interrupts,
            run_command: Callable[[list[str]], int]) -> None:
    line = conn.makefile("rb").readline()
    if not line:
        return  # a probe
    try:
        request = json.loads(line)
        if not (isinstance(request, dict) and isinstance(request.get("argv"), list)
                and all(isinstance(a, str) for a in request["argv"])
                and isinstance(request.get("cwd"), str) and isinstance(request.get("env"), dict)
                and all(isinstance(v, str) for v in request["env"].values())):
            raise TypeError("not a diffrecon request")
    except (ValueError, TypeError, KeyError):  # not a diffrecon client: nothing to run
        print("diffrecon daemon: a malformed request was ignored", flush=True)
        return
    channel = _Channel(conn)
    out = _Stream(channel, "out", False)
    err = _Stream(channel, "err", bool(request.get("tty")))
    threading.Thread(target=interrupts.watch, args=(conn,), daemon=True).start()
    rc, t0 = 1, time.monotonic()
    from diffrecon.tasks.caching import code_version

    if code_version.__wrapped__() != code_version():  # the sources changed since the start
        err.write(f"diffrecon: error: diffrecon's code changed since this daemon (pid "
                  f"{os.getpid()}) started; restart it (nothing was run)\n")
        channel.send(rc=2)
        print("diffrecon daemon: refused a command: the code changed; restart", flush=True)
        return
    try:
        with _as_client(request, out, err):
            with interrupts.lock:
                interrupts.current = conn
            try:
                rc = run_command(list(request["argv"]))
            except SystemExit as exc:  # argparse: --help, a usage error
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except KeyboardInterrupt:
                rc = 130
                with interrupts.lock:
                    interrupts.pending = False
            except _Stop:  # SIGTERM: this command ends as a killed process would, then we
                rc = 143
                raise
            except Exception:  # the client sees the traceback it would have seen
                import traceback

                traceback.print_exc()
            finally:
                with interrupts.lock:
                    interrupts.current = None
    finally:
        channel.send(rc=rc)
        # the daemon's own log: no arguments (file names, logins), only the outcome
        gone = " (interrupted)" if rc == 130 else ""
        print(f"diffrecon daemon: a command ended with exit code {rc} after "
              f"{time.monotonic() - t0:.1f} s{gone}", flush=True)
