"""A fork server for `forgetlab` commands: a job pays for importing torch, transformers and mlflow (7-8 s on a busy
CPU) once per server, not once per job.

With FORGETLAB_FORKSERVER=1 (the Snakefile sets it for its jobs), the `forgetlab` command is a client: it connects
over a unix socket to a long-lived server process that has forgetlab's stages (and with them torch, transformers and
mlflow) imported, and sends it its argv, working directory, environment, umask and its stdin/stdout/stderr (the file
descriptors themselves, SCM_RIGHTS). For each request the server forks a handler, which forks the worker: the worker
takes over the client's descriptors, directory and environment and runs the command as the client would have; the
handler reports the worker's exit to the client, which exits with the same status (or dies by the same signal). So
the job's log, exit status and outputs are the in-process job's.

- Signals: SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 that reach the client (Snakemake's or SLURM's
  SIGTERM) are passed to the worker: a training job checkpoints and exits 143, as in-process.
- A client that dies (SIGKILL) closes its socket: the handler kills the worker's process group, so no orphan goes on
  writing outputs.
- Stale code is never served: the socket's name carries a digest of forgetlab's source files, the interpreter, the
  host, the SLURM job and the environment variables read at import time (CUDA_, OMP_, HF_, ...; not MLFLOW_, read
  when used; not the thread counts, THREAD_ENV, which the server imports with at 1).
- The first client starts the server (under a lock, so concurrent jobs start one) and waits for it; the server exits
  after FORGETLAB_FORKSERVER_IDLE seconds (default 60) without a request.
- Fallback: unset or 0, inside a torchrun worker, or with no server reachable, the command runs in this process
  exactly as before.

The server imports but runs nothing before it forks: no OpenMP threads, no CUDA, no MLflow connection (it checks
that it has one thread); each worker sets its threads from the job's params. This module uses the standard library
only (the client must start fast).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ENV = "FORGETLAB_FORKSERVER"
IDLE_ENV = "FORGETLAB_FORKSERVER_IDLE"
DIR_ENV = "FORGETLAB_FORKSERVER_DIR"
# the environment variables that a module may read at import time: part of the server's identity
IMPORT_ENV = ("CUDA_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "HF_", "TRANSFORMERS_",
              "TOKENIZERS_", "PYTHON", "LD_", "NCCL_", "GLOO_", "VECLIB_", "NUMEXPR_", "GOTO_")
# the thread counts Snakemake sets for a job's `threads:`: a library that reads one at import starts its pool then
# (numpy's OpenBLAS, scikit-learn's OpenMP), and a fork of a process with a thread pool is unsafe. So the server
# imports with each set to 1 and is the same whatever the starting client's count; each worker sets its torch
# threads from its job's params (forgetlab.recipes.set_threads), as the in-process job does
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
START_TIMEOUT = 300.0  # seconds a client waits for a server it started (imports on a loaded machine)


def enabled(env=os.environ) -> bool:
    """FORGETLAB_FORKSERVER is set to something other than 0 (and we are not a torchrun worker)."""
    return env.get(ENV, "0") not in ("", "0") and "LOCAL_RANK" not in env


def source_digest() -> str:
    """The server's identity: forgetlab's source files (names and contents), the interpreter, its
    installed packages, the host, the user, the SLURM job and the import-time environment (but the
    thread counts, THREAD_ENV: the server imports with 1)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for f in sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".txt", ".json")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes() + b"\0")
    identity = [str(pkg), os.path.realpath(sys.executable), sys.prefix, sys.version, socket.gethostname(), os.getuid(),
                sorted((k, v) for k, v in os.environ.items() if k.startswith(IMPORT_ENV) and k not in THREAD_ENV),
                os.environ.get("SLURM_JOB_ID"),  # a server never serves two SLURM jobs
                # installing or upgrading a package changes its site-packages directory
                [(p, os.stat(p).st_mtime_ns) for p in sys.path if "site-packages" in p and os.path.isdir(p)]]
    h.update(json.dumps(identity).encode())
    return h.hexdigest()[:16]


def socket_path(digest: Optional[str] = None) -> Path:
    """$FORGETLAB_FORKSERVER_DIR (default: $TMPDIR/forgetlab-forkserver-<uid>)/<digest>.sock."""
    root = Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / f"forgetlab-forkserver-{os.getuid()}")
    return root / f"{digest or source_digest()}.sock"


# --- messages: 4-byte length + JSON --------------------------------------------------------------

def send_msg(sock: socket.socket, obj: dict, fds: tuple = ()) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def recv_msg(sock: socket.socket) -> dict:
    (n,) = struct.unpack("!I", recv_exact(sock, 4))
    return json.loads(recv_exact(sock, n))


# --- client --------------------------------------------------------------------------------------

MAX_ADDRESS = 100  # bytes; a socket address holds 107: a longer path goes through its directory's descriptor


def address(path: Path, call: Callable[[str], None]) -> None:
    """call(addr) with an address of `path` that fits in a socket address."""
    if len(os.fsencode(str(path))) <= MAX_ADDRESS:
        return call(str(path))
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        return call(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)


def connect(path: Path) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        address(path, sock.connect)
    except OSError:
        sock.close()
        return None
    return sock


def start_server(path: Path) -> Optional[socket.socket]:
    """Connect to the server at `path`, starting it first if none answers (one at a time, by a lock)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    failed = Path(f"{path}.failed")
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = connect(path)
        if sock is not None or failed.exists():  # a server of this digest failed to start: in-process
            return sock
        path.unlink(missing_ok=True)
        log = open(f"{path}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "forgetlab.zygote", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, cwd="/", start_new_session=True, close_fds=True,
                                env={**os.environ, **dict.fromkeys(THREAD_ENV, "1")})
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            sock = connect(path)
            if sock is not None:
                return sock
            time.sleep(0.05)
        if proc.poll() is not None:  # it could not start (see its .log): no client of this digest tries again
            failed.write_text(f"the fork server exited with status {proc.returncode}; see {path}.log\n")
        return None


def request(sock: socket.socket, argv: list[str]) -> int:
    """Send the job to the server; pass on signals; return the worker's exit status (-N: signal N).

    The forwarded signals are blocked from the request until the handlers that pass them on are in
    place, once the job has started: a SIGTERM that arrives meanwhile (the job may already be
    running) waits and is passed on, instead of killing the client, and the job with it, unsaved.
    If the server never starts the job (NotStarted), the signal is delivered as usual when the
    mask is restored."""
    def forward(signum, _frame):
        try:
            send_msg(sock, {"signal": signum})
        except OSError:
            pass

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        send_msg(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": current_umask()}, (0, 1, 2))
        try:
            recv_msg(sock)  # the worker's pid: the job has started
        except (EOFError, OSError):
            raise NotStarted from None
        for sig in FORWARDED:
            signal.signal(sig, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    reply = recv_msg(sock)
    return -reply["signal"] if "signal" in reply else reply["exit"]


class NotStarted(Exception):
    """The server closed the connection before it started the job (it was exiting, idle)."""


def run_client(argv: list[str]) -> Optional[int]:
    """The job's exit status from the fork server, or None when it should run in this process."""
    if not enabled():
        return None
    try:
        path = socket_path()
        sock = connect(path) or start_server(path)
    except OSError:
        return None
    if sock is None:
        return None
    with sock:
        try:
            return request(sock, argv)
        except NotStarted:
            return None
        except (EOFError, OSError):
            print("forgetlab: the fork server went away during the job", file=sys.stderr)
            return 1


def exit_like(status: int) -> None:
    """Exit with `status`; a negative status -N dies by signal N, as the worker did."""
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    sys.exit(status)


def current_umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# --- server --------------------------------------------------------------------------------------

def serve(path: Path, run: Callable[[], None], idle: float) -> None:
    """Accept jobs at `path` until `idle` seconds pass with none running; fork a handler per job.
    The caller has checked that forking is safe (forgetlab.zygote.check_fork_safe)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address(tmp, listener.bind)
    listener.listen(64)
    os.replace(tmp, path)  # clients connect only once everything is imported
    ino = path.stat().st_ino
    Path(f"{path}.pid").write_text(f"{os.getpid()}\n")
    handlers: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            while handlers:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                handlers.discard(pid)
                last = time.monotonic()
            if not handlers and time.monotonic() - last > idle:
                break
            if select.select([listener], [], [], 0.5)[0]:
                handlers.add(accept(listener, run))
                last = time.monotonic()
        remove_own(path, ino)  # no new client finds this server; those already queued are served
        while select.select([listener], [], [], 0)[0]:
            handlers.add(accept(listener, run))
    finally:
        listener.close()
        remove_own(path, ino)


def accept(listener: socket.socket, run: Callable[[], None]) -> int:
    """Accept one client and fork its handler; return the handler's pid."""
    conn, _ = listener.accept()
    pid = os.fork()
    if pid == 0:
        listener.close()
        code = 1
        try:
            handle(conn, run)
            code = 0
        finally:
            os._exit(code)
    conn.close()
    return pid


def remove_own(path: Path, ino: int) -> None:
    """Remove the socket file unless a newer server has taken the name (each binds its own inode)."""
    try:
        if path.stat().st_ino == ino:
            path.unlink()
    except OSError:
        pass


def handle(conn: socket.socket, run: Callable[[], None]) -> None:
    """One job: fork the worker with the client's descriptors; report its exit; pass on signals;
    kill it (its whole process group) if the client goes away."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    (n,) = struct.unpack("!I", data[:4])
    body = data[4:]
    if len(body) < n:
        body += recv_exact(conn, n - len(body))
    job = json.loads(body)
    pid = os.fork()
    if pid == 0:
        conn.close()
        work(job, fds, run)  # never returns
    try:
        os.setpgid(pid, pid)  # as the worker does itself: its group exists before either can kill it
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    send_msg(conn, {"pid": pid})  # the job runs: from here on the client waits for it, whatever happens
    exited = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None  # readable once the worker exits
    watched, poll = ([conn], 0.05) if exited is None else ([conn, exited], None)
    status = None
    while status is None:
        ready = select.select(watched, [], [], poll)[0]
        if conn in ready:
            try:
                msg = recv_msg(conn)
            except (EOFError, OSError):  # the client is gone: so is the job
                kill_group(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            kill_group(pid, msg["signal"], group=False)
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
    reply = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
    try:
        send_msg(conn, reply)
    except OSError:
        pass


def kill_group(pid: int, sig: int, group: bool = True) -> None:
    """Signal the worker's process group (with what it started), or the worker alone."""
    for kill in ((os.killpg, os.kill) if group else (os.kill,)):
        try:
            return kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def work(job: dict, fds: list[int], run: Callable[[], None]) -> None:
    """The worker: become the client's process (descriptors, directory, environment, argv), run the
    command, exit as the interpreter would (threads joined, atexit handlers, streams flushed)."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGCHLD, *FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        os.umask(job["umask"])
        sys.argv = list(job["argv"])
        try:
            run()
            code = 0
        except SystemExit as e:
            code = exit_code(e)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT  # as the interpreter does: it dies by SIGINT
        except BaseException:
            traceback.print_exc()
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


def exit_code(e: SystemExit) -> int:
    """The exit status that the interpreter gives a SystemExit (printing a non-integer code)."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1
