"""Start a ``python -m <module>`` worker process and talk to it over an authenticated local socket.

The app's heavy work (training, t-SNE / UMAP) runs in worker processes so that the server's Python
thread, which answers every page's poll, never competes with it for the GIL. ``multiprocessing``'s
own start methods are not used: spawn and forkserver re-import the parent's ``__main__`` in the child,
and while Streamlit runs a page that is ``app.py`` (the child would start a second app); fork copies
a threaded server. So a worker is a plain ``python -m dhaka.ui.<worker>``; the parent listens on a
fresh AF_UNIX ``multiprocessing.connection.Listener`` and passes the one-time key on the child's
stdin (never in argv or the environment, which other users of the machine can read).

Nothing here imports streamlit.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

__all__ = ["WorkerProcess", "connect_to_parent"]

_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """A started ``python -m module *args`` with a connection to it (accepted in a thread).

    Parameters
    ----------
    module
        The worker's module, run with ``python -m``; its ``__main__`` calls :func:`connect_to_parent`.
    args
        Extra command-line arguments (after the socket address).
    env
        Environment variables set for the worker (over the server's own).
    """

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        key = secrets.token_bytes(32)
        self._listener = Listener(family="AF_UNIX", authkey=key)
        env = {**os.environ, **(env or {}),
               "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", module, str(self._listener.address), *args],
                                     stdin=subprocess.PIPE, cwd=str(_ROOT), env=env)
        assert self.proc.stdin is not None
        self.proc.stdin.write(key.hex().encode() + b"\n")
        self.proc.stdin.close()
        self._conn: Connection | None = None
        self._accept_error: BaseException | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"accept-{module}").start()

    def _accept(self) -> None:
        # in a thread: a worker may do seconds of work before it connects, and nobody should wait for it
        try:
            self._conn = self._listener.accept()
        except BaseException as exc:  # noqa: BLE001 - the listener was closed, or the handshake failed
            self._accept_error = exc
        finally:
            self._accepted.set()

    def connected(self) -> bool:
        """``True`` once the worker has connected (never blocks)."""
        return self._accepted.is_set() and self._conn is not None

    @property
    def conn(self) -> Connection:
        """The connection to the worker (blocks until the worker has connected or has exited)."""
        while not self._accepted.wait(0.25):
            if self.proc.poll() is not None and not self._accepted.wait(0.5):
                raise EOFError(f"the worker process ended before it connected: {self.exit_message()}")
        if self._conn is None:
            raise EOFError(f"the worker did not connect: {self._accept_error!r}")
        return self._conn

    def alive(self) -> bool:
        """``True`` while the process runs."""
        return self.proc.poll() is None

    def exit_message(self) -> str:
        """Why the process ended, in words (for an error message)."""
        code = self.proc.poll()
        if code is None:
            return "it is still running"
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
            return f"it was killed by {name}{hint}"
        return f"it exited with status {code}"

    def close(self, *, timeout: float = 5.0) -> None:
        """Close the connection and end the process: terminated if it has not exited within ``timeout`` s."""
        try:
            if self._conn is not None:
                self._conn.close()
            self._listener.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
                    self.proc.kill()
                    self.proc.wait()


def connect_to_parent(address: str) -> Connection | None:
    """In the worker: read the key from stdin and connect; ``None`` if the parent has gone."""
    key = bytes.fromhex(sys.stdin.readline().strip())
    try:
        return Client(address, family="AF_UNIX", authkey=key)
    except OSError:
        return None
