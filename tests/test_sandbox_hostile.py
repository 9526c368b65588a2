"""Hostile programs against the sandbox, each capability reached through several modules (os, io, pathlib,
shutil, subprocess, ctypes calling libc, signal, multiprocessing, socket, posix_spawn, fork + setsid).

The world outside is made reachable on purpose, so that only the sandbox stands in the way: a
world-readable secret file and a world-writable folder under /var/tmp, a victim process with a
secret in its environment, a TCP server on loopback, this process with a SIGUSR1 counter. After each
batch: the files are as they were, no secret was printed, the victim lives, nothing connected, and no
process the programs started is left (each carries a unique marker in its argv; /proc is scanned).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

import pytest

from rlkit.lib.evaluation.sandbox import Limits, run, run_many, seccomp

LIMITS = Limits(timeout=3.0, memory_mb=512, disk_mb=16, processes=16)
LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
LONG = "[sys.executable, '-c', 'import time; time.sleep(600)', MARKER]"  # a process that would outlive the run


@pytest.fixture(scope="module")
def world():
    base = tempfile.mkdtemp(prefix="rlkit-hostile-", dir="/var/tmp")  # not /tmp: the sandbox has its own
    os.chmod(base, 0o755)
    secret, env_secret = "file-" + secrets.token_hex(8), "env-" + secrets.token_hex(8)
    with open(f"{base}/secret.txt", "w") as f:
        f.write(secret)
    os.chmod(f"{base}/secret.txt", 0o644)
    os.mkdir(f"{base}/outside")
    os.chmod(f"{base}/outside", 0o777)
    with open(f"{base}/outside/keep.txt", "w") as f:
        f.write("still here")
    os.chmod(f"{base}/outside/keep.txt", 0o666)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={**os.environ, "RLKIT_VICTIM_SECRET": env_secret})
    server = socket.create_server(("127.0.0.1", 0))
    connections = []
    threading.Thread(target=lambda: [connections.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    hits = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    os.environ["RLKIT_PARENT_SECRET"] = env_secret
    yield SimpleNamespace(base=base, secret=secret, env_secret=env_secret, victim=victim, port=server.getsockname()[1],
                          connections=connections, hits=hits)
    del os.environ["RLKIT_PARENT_SECRET"]
    signal.signal(signal.SIGUSR1, previous)
    victim.kill()
    victim.wait()
    server.close()
    shutil.rmtree(base)


def attack(world, programs: dict[str, str]):
    """Run every program (its names filled in) concurrently; return name -> Result and the marker they used."""
    marker = "rlkit-marker-" + secrets.token_hex(8)
    head = (f"import os, sys, signal, subprocess\nSECRET = {world.base + '/secret.txt'!r}\n"
            f"OUTSIDE = {world.base + '/outside'!r}\nTEST_PID = {os.getpid()}\nVICTIM = {world.victim.pid}\n"
            f"PORT = {world.port}\nMARKER = {marker!r}\nprint('ready', file=sys.stderr, flush=True)\n")
    began = time.monotonic()
    results = run_many([head + code for code in programs.values()], LIMITS, workers=8)
    assert time.monotonic() - began < LIMITS.timeout * len(programs) / 8 + 30
    assert leftovers(marker) == []  # nothing they started outlives the run
    assert [name for name, r in zip(programs, results) if not r.stderr.startswith("ready")] == []  # they all ran
    return dict(zip(programs, results))


def leftovers(marker: str) -> list[str]:
    """The host's processes whose command line holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_secrets_outside_stay_unread(world):
    programs = {
        "open": "print(open(SECRET).read())",
        "io.FileIO": "import io\nprint(io.FileIO(SECRET).read())",
        "os.open": "fd = os.open(SECRET, os.O_RDONLY)\nprint(os.read(fd, 100))",
        "pathlib": "import pathlib\nprint(pathlib.Path(SECRET).read_text())",
        "shutil.copy": "import shutil\nshutil.copy(SECRET, 'c')\nprint(open('c').read())",
        "subprocess cat": "subprocess.run(['cat', SECRET])",
        "ctypes libc": LIBC + "buf = ctypes.create_string_buffer(100)\nfd = libc.open(SECRET.encode(), 0)\n"
                              "libc.read(fd, buf, 100)\nprint(buf.value)",
        "posix_spawn": "os.waitpid(os.posix_spawn('/bin/cat', ['cat', SECRET], {}), 0)",
        "multiprocessing": "import multiprocessing as mp\np = mp.get_context('fork').Process(target=lambda: "
                           "print(open(SECRET).read(), flush=True))\np.start(); p.join()",
        "the victim's environ": "print(open(f'/proc/{VICTIM}/environ', 'rb').read())",
        "the test's environ": "print(open(f'/proc/{TEST_PID}/environ', 'rb').read())",
        "environ through cat": "subprocess.run(['cat', f'/proc/{VICTIM}/environ'])",
        "environ through ctypes": LIBC + "buf = ctypes.create_string_buffer(4096)\n"
                                         "libc.read(libc.open(f'/proc/{VICTIM}/environ'.encode(), 0), buf, 4096)\n"
                                         "print(buf.raw)",
        "every environ in /proc": "for p in os.listdir('/proc'):\n    try:\n"
                                  "        print(open(f'/proc/{p}/environ', 'rb').read())\n    except OSError:\n"
                                  "        pass",
        "os.environ": "print(dict(os.environ))",
        "the parent's environ": "print(open(f'/proc/{os.getppid() or 1}/environ', 'rb').read())",
    }
    for name, result in attack(world, programs).items():
        printed = result.stdout + result.stderr
        assert world.secret not in printed and world.env_secret not in printed, name


def test_files_outside_stay_untouched(world):
    programs = {
        "open": "open(OUTSIDE + '/by_open', 'w').write('x')",
        "mkdir": "os.mkdir(OUTSIDE + '/by_mkdir')",
        "pathlib": "import pathlib\npathlib.Path(OUTSIDE, 'by_pathlib').touch()",
        "shutil.copy": "open('f', 'w').write('x')\nimport shutil\nshutil.copy('f', OUTSIDE + '/by_shutil')",
        "subprocess touch": "subprocess.run(['touch', OUTSIDE + '/by_touch'])",
        "shell": "os.system(f'mkdir {OUTSIDE}/by_shell; echo x > {OUTSIDE}/keep.txt')",
        "ctypes mkdir": LIBC + "libc.mkdir((OUTSIDE + '/by_ctypes').encode(), 0o777)",
        "posix_spawn": "os.waitpid(os.posix_spawn('/usr/bin/touch', ['touch', OUTSIDE + '/by_spawn'], {}), 0)",
        "remove": "os.remove(OUTSIDE + '/keep.txt')",
        "rmtree": "import shutil\nshutil.rmtree(OUTSIDE)",
        "rename": "os.rename(OUTSIDE + '/keep.txt', OUTSIDE + '/renamed')",
        "append": "open(OUTSIDE + '/keep.txt', 'a').write('changed')",
        "symlink": "os.symlink('/etc/passwd', OUTSIDE + '/by_symlink')",
        "the host's /tmp": "open('/tmp/' + MARKER, 'w').write('x')\nos.mkdir('/tmp/' + MARKER + '-dir')",
    }
    attack(world, programs)
    assert sorted(os.listdir(world.base + "/outside")) == ["keep.txt"]
    assert open(world.base + "/outside/keep.txt").read() == "still here"
    assert [name for name in os.listdir("/tmp") if name.startswith("rlkit-marker-")] == []


def test_the_run_and_its_neighbours_cannot_be_signalled(world):
    programs = {
        "os.kill": "os.kill(VICTIM, signal.SIGKILL)",
        "os.kill the test": "os.kill(TEST_PID, signal.SIGUSR1)",
        "killpg": "os.killpg(VICTIM, signal.SIGKILL)",
        "kill command": "subprocess.run(['kill', '-9', str(VICTIM)])\nsubprocess.run(['kill', '-USR1', str(TEST_PID)])",
        "ctypes libc.kill": LIBC + "libc.kill(VICTIM, 9)\nlibc.kill(TEST_PID, int(signal.SIGUSR1))",
        "pidfd": "signal.pidfd_send_signal(os.pidfd_open(VICTIM), signal.SIGKILL)",
        "multiprocessing": "import multiprocessing as mp\np = mp.get_context('fork').Process(target=os.kill, "
                           "args=(TEST_PID, signal.SIGUSR1))\np.start(); p.join()",
        "the parent": "os.kill(os.getppid(), signal.SIGKILL)",
    }
    attack(world, programs)
    time.sleep(0.2)  # a signal that got through would have arrived by now
    assert world.victim.poll() is None and world.hits == []


def test_no_process_outlives_the_run(world):
    programs = {
        "Popen in a new session": f"subprocess.Popen({LONG}, start_new_session=True)",
        "double fork and setsid": f"if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                  f"        os.execv(sys.executable, {LONG})\n    os._exit(0)\nos.wait()",
        "nohup through a shell": "subprocess.Popen(f'nohup {sys.executable} -c \"import time; time.sleep(600)\" '"
                                 " f'{MARKER} >/dev/null 2>&1 &', shell=True).wait()",
        "posix_spawn, then hang": f"os.posix_spawn(sys.executable, {LONG}, {{}})\nimport time\ntime.sleep(600)",
        "ctypes fork": LIBC + f"if libc.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, {LONG})",
        "multiprocessing daemon": "import multiprocessing as mp\n"
                                  f"mp.get_context('fork').Process(target=os.execv, args=(sys.executable, {LONG})).start()"
                                  "\nos._exit(0)",
        "ignore SIGTERM and hang": f"subprocess.Popen({LONG})\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                   "while True:\n    pass",
    }
    results = attack(world, programs)  # attack() scans /proc for the marker
    assert results["ignore SIGTERM and hang"].timed_out


def test_the_network_is_out_of_reach(world):
    programs = {
        "socket": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)",
        "urllib": "import urllib.request\nurllib.request.urlopen(f'http://127.0.0.1:{PORT}/', timeout=2)",
        "http.client": "import http.client\nhttp.client.HTTPConnection('127.0.0.1', PORT, timeout=2).request('GET', '/')",
        "asyncio": "import asyncio\nasyncio.run(asyncio.wait_for(asyncio.open_connection('127.0.0.1', PORT), 2))",
        "subprocess": "subprocess.run([sys.executable, '-c', f'import socket; "
                      "socket.create_connection((\"127.0.0.1\", {PORT}), timeout=2)'])",
        "through localhost": "import socket\nsocket.create_connection(('localhost', PORT), timeout=2)",
    }
    results = attack(world, programs)
    time.sleep(0.2)
    assert world.connections == []
    assert "OSError" in results["socket"].stderr or "Error" in results["socket"].stderr


def test_disk_processes_and_memory_are_bounded(world):
    fill = ("total = 0\ntry:\n    for i in range(64):\n        with open(f'{FOLDER}/f{i}', 'wb') as f:\n"
            "            f.write(b'x' * 2**20)\n        total += 2**20\nexcept OSError:\n    pass\nprint(total)")
    programs = {
        "fill /tmp": fill.replace("{FOLDER}", "/tmp"),
        "fill the working directory": fill.replace("{FOLDER}", "."),
        "fill /dev/shm": fill.replace("{FOLDER}", "/dev/shm"),
        "one huge file": "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nn = 0\ntry:\n    with open('big', 'wb') as f:\n"
                         "        for _ in range(64):\n            n += f.write(b'x' * 2**20)\n            f.flush()\n"
                         "except OSError:\n    pass\nprint(n)",
        "count forks": "import time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
                       "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
                       "print(n)",
        "count threads": "import threading, time\nn = 0\ntry:\n    for _ in range(200):\n"
                         "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n        n += 1\n"
                         "except RuntimeError:\n    pass\nprint(n, flush=True)\nos._exit(0)",
        "huge allocation": "x = bytearray(8 * 2**30)\nprint(len(x))",
    }
    results = attack(world, programs)
    cap = LIMITS.disk_mb * 2**20
    for name in ("fill /tmp", "fill the working directory", "one huge file"):
        assert 0 < int(results[name].stdout) <= cap, name
    assert results["fill /dev/shm"].stdout.strip() == "0"
    assert 0 < int(results["count forks"].stdout) < LIMITS.processes
    assert 0 < int(results["count threads"].stdout) < LIMITS.processes
    assert "MemoryError" in results["huge allocation"].stderr


def test_a_fork_bomb_is_bounded_and_ends_at_the_timeout(world):
    bomb = "import time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)"
    assert attack(world, {"fork bomb": bomb})["fork bomb"].timed_out
    assert run("print('after')", LIMITS).stdout == "after\n"  # the sandbox goes on working


@pytest.mark.skipif(not seccomp.supported(), reason="the seccomp filter is x86-64 only")
def test_new_namespaces_and_kernel_surfaces_are_refused(world):
    calls = {"unshare a user namespace": "libc.unshare(0x10000000)", "unshare a network": "libc.unshare(0x40000000)",
             "clone into a user namespace": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
             "ptrace": "libc.ptrace(0, 0, 0, 0)", "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
             "bpf": "libc.syscall(321, 0, 0, 0)", "io_uring": "libc.syscall(425, 1, 0)",
             "mount": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)"}
    code = LIBC + "import errno\nfor name, call in " + repr(calls) + ".items():\n" \
        "    result = eval(call)\n    if result == 0 and 'clone' in name:\n        os._exit(0)  # the clone's child\n" \
        "    print(name, result, errno.errorcode.get(ctypes.get_errno()), flush=True)"
    lines = attack(world, {"calls": code})["calls"].stdout.splitlines()
    assert lines == [f"{name} -1 EPERM" for name in calls]
