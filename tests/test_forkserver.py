"""The fork server (forgetlab.forkserver): a job run through it behaves as the same job in its own
process: its exit status, its stdout/stderr (the client's own descriptors), its working directory
and environment, SIGTERM passed on (a checkpointing job's 143), no orphan when the client is
killed, a new server for changed source code, and the in-process fallback.

Most tests serve a toy command (TOY below) instead of forgetlab's CLI, so that the server starts
in a fraction of a second; one test runs forgetlab's own server from a copy of the package."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgetlab import forkserver
from tests.helpers import REPO, cli_env, fork_server_pids, stop_fork_servers

pytestmark = pytest.mark.e2e  # server and client processes

# a server whose command is `toy ACTION ...` (the worker's sys.argv), in place of forgetlab's CLI
TOY = r"""
import os, signal, sys, time
from pathlib import Path
from forgetlab import forkserver

def toy():
    action, *args = sys.argv[1:]
    if action == "echo":  # stdout, stderr, exit status
        print("to stdout"); print("to stderr", file=sys.stderr); sys.exit(int(args[0]))
    if action == "where":  # directory and environment
        print(os.getcwd()); print(os.environ.get("TOY_VALUE")); print(os.environ.get("TOY_SERVER_ONLY"))
    if action == "term":  # a SIGTERM handler as a checkpointing job's: note it, exit 143
        def on_term(signum, frame):
            Path(args[0]).write_text("checkpointed"); sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        Path(args[1]).write_text(str(os.getpid())); time.sleep(60)
    if action == "late":  # write a file after a while (an orphan would)
        Path(args[0]).write_text(str(os.getpid())); time.sleep(float(args[2])); Path(args[1]).write_text("late")

os.environ["TOY_SERVER_ONLY"] = "set in the server"
forkserver.serve(Path(sys.argv[1]), toy, float(sys.argv[2]))
"""

CLIENT = "import sys; from forgetlab import forkserver; forkserver.exit_like(forkserver.request(forkserver.connect(" \
         "__import__('pathlib').Path(sys.argv[1])), ['toy', *sys.argv[2:]]))"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may be reaped between the signal and the read: then it is gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return not state.startswith("Z")


@pytest.fixture
def toy_server(tmp_path):
    sock = tmp_path / "toy.sock"
    server = subprocess.Popen([sys.executable, "-c", TOY, str(sock), "30"], env=cli_env())
    assert wait_for(sock.exists), "the toy server did not start"
    yield sock
    server.terminate()
    server.wait(10)


def client(sock: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(sock), *args], env=kw.pop("env", cli_env()), **kw)


def test_exit_status_and_output_go_to_the_clients_descriptors(toy_server, tmp_path):
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = client(toy_server, "echo", "3", stdout=out, stderr=err)
        assert proc.wait(30) == 3
    assert (tmp_path / "out").read_text() == "to stdout\n"
    assert (tmp_path / "err").read_text() == "to stderr\n"


def test_the_clients_directory_and_environment(toy_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = client(toy_server, "where", cwd=work, env=cli_env(TOY_VALUE="from the client"), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    # the server's own environment is replaced by the client's
    assert (proc.returncode, out.splitlines()) == (0, [str(work), "from the client", "None"])


def test_a_sigterm_before_the_job_started_is_passed_on_once_it_has(tmp_path):
    # this test is the server: it holds the pid reply back while the client gets its SIGTERM (under
    # load a client can be that late: the job runs, the client has not yet set its handlers)
    import socket

    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)
    proc = client(path, "term")
    conn, _ = listener.accept()
    conn.settimeout(30)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)  # the request: the client is inside request()
    for fd in fds:
        os.close(fd)
    (n,) = struct.unpack("!I", data[:4])
    body = data[4:] + forkserver.recv_exact(conn, n - len(data[4:]))  # as the server reads it
    assert json.loads(body)["argv"] == ["toy", "term"]
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # held, not the default action
    forkserver.send_msg(conn, {"pid": 1})  # the job has started
    assert forkserver.recv_msg(conn) == {"signal": signal.SIGTERM}  # passed on
    forkserver.send_msg(conn, {"exit": 143})
    assert proc.wait(30) == 143
    conn.close()
    listener.close()


def test_sigterm_is_passed_on_and_the_job_exits_143(toy_server, tmp_path):
    pid_file, note = tmp_path / "pid", tmp_path / "note"
    proc = client(toy_server, "term", str(note), str(pid_file))
    assert wait_for(pid_file.exists)
    worker = int(pid_file.read_text())
    assert worker != proc.pid  # the job runs in the server's worker, not in the client
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert note.read_text() == "checkpointed"


def test_sigterm_without_a_handler_kills_the_client_by_sigterm(toy_server, tmp_path):
    pid_file = tmp_path / "pid"
    proc = client(toy_server, "late", str(pid_file), str(tmp_path / "never"), "60")
    assert wait_for(pid_file.exists)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # as an in-process job without a handler dies
    assert wait_for(lambda: not alive(int(pid_file.read_text())))


def test_a_killed_client_takes_its_job_with_it(toy_server, tmp_path):
    pid_file, late = tmp_path / "pid", tmp_path / "late"
    proc = client(toy_server, "late", str(pid_file), str(late), "3")
    assert wait_for(pid_file.exists)
    proc.kill()
    proc.wait(10)
    assert wait_for(lambda: not alive(int(pid_file.read_text())), 10)
    time.sleep(3.5)
    assert not late.exists()


def test_a_socket_path_longer_than_a_socket_address(tmp_path):
    """A socket address holds 107 bytes; a server under a deeper directory (a cluster's $TMPDIR, a
    pytest tmp_path) still binds and serves: its temporary name, `.<name>.<pid>`, is longer still."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "toy.sock"
    assert len(os.fsencode(str(sock))) > 107
    server = subprocess.Popen([sys.executable, "-c", TOY, str(sock), "30"], env=cli_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: sock.exists() or server.poll() is not None) and server.poll() is None, server.stderr.read()
        proc = client(sock, "echo", "0", stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (0, "to stdout\n")
    finally:
        server.terminate()
        server.wait(10)


def test_disabled_or_in_a_torchrun_worker_runs_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv(forkserver.DIR_ENV, str(tmp_path / "servers"))
    for value in ("0", ""):
        monkeypatch.setenv(forkserver.ENV, value)
        assert forkserver.run_client(["forgetlab", "--help"]) is None
    monkeypatch.setenv(forkserver.ENV, "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert forkserver.run_client(["forgetlab", "--help"]) is None
    assert not (tmp_path / "servers").exists()  # nothing was started


def test_forgetlab_server_reused_and_replaced_when_the_source_changes(tmp_path):
    """forgetlab's own server, from a copy of the package: a job through it, a second job through the
    same server, then, after an edit of the source, a job through a new one."""
    shutil.copytree(REPO / "src" / "forgetlab", tmp_path / "src" / "forgetlab", ignore=shutil.ignore_patterns("__pycache__"))
    servers = tmp_path / "servers"
    env = cli_env(PYTHONPATH=str(tmp_path / "src"), FORGETLAB_FORKSERVER="1", FORGETLAB_FORKSERVER_DIR=str(servers),
                  FORGETLAB_FORKSERVER_IDLE="30", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "forgetlab.cli", "check-config"]

    def run(*args):
        return subprocess.run([*cmd, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    def pids():
        return fork_server_pids(servers)

    try:
        ok = run("config/smoke.yaml")
        assert (ok.returncode, ok.stdout) == (0, "config/smoke.yaml: ok\n"), ok.stderr
        first = pids()
        logs = "".join(p.read_text() for p in sorted(servers.glob("*.log")))  # why a server did not start
        assert len(first) == 1 and alive(first[0]), logs
        bad = run("config/no-such.yaml")
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "no-such.yaml" in bad.stderr
        assert pids() == first  # the same server
        with open(tmp_path / "src" / "forgetlab" / "config.py", "a") as f:
            f.write("\n# an edit\n")
        again = run("config/smoke.yaml")
        assert again.returncode == 0, again.stderr
        both = pids()
        assert len(both) == 2 and first[0] in both  # a new server for the new source
    finally:
        stop_fork_servers(servers)


def test_a_job_of_two_threads_is_served_by_the_one_threads_server(tmp_path):
    """Snakemake sets OMP_NUM_THREADS (and OpenBLAS's, MKL's, ...) to a job's threads. Importing numpy and
    scikit-learn with 2 starts their thread pools, and a server with pools refused to serve: the 2-thread
    pretraining job ran in-process, after waiting for that server's imports. The server imports with
    one thread whatever the starting client's count, and a 1-thread and a 2-thread job share it."""
    servers = tmp_path / "servers"
    base = dict(FORGETLAB_FORKSERVER="1", FORGETLAB_FORKSERVER_DIR=str(servers), FORGETLAB_FORKSERVER_IDLE="30")
    cmd = [sys.executable, "-m", "forgetlab.cli", "check-config", "config/smoke.yaml"]
    try:
        for threads in ("2", "1"):
            env = cli_env(**base, **dict.fromkeys(forkserver.THREAD_ENV, threads))
            ok = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
            assert (ok.returncode, ok.stdout) == (0, "config/smoke.yaml: ok\n"), ok.stderr
            logs = "".join(p.read_text() for p in sorted(servers.glob("*.log")))
            assert not list(servers.glob("*.failed")), logs
            pids = fork_server_pids(servers)
            assert len(pids) == 1 and alive(pids[0]), logs  # served, by one server for both
        names = [(t / "comm").read_text().strip() for t in Path(f"/proc/{pids[0]}/task").iterdir()]
        assert [n for n in names if n != "jemalloc_bg_thd"] == ["python"], names  # no thread pool
    finally:
        stop_fork_servers(servers)
