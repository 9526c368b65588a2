"""The first code that runs in a sandbox: limits itself, drops to its own user, then runs the program.

This file is not imported by rlkit: its text is handed to `python -I -c` inside the sandbox, so it may
import only the standard library. argv = [done_fd, uid, gid, memory_bytes, cpu_s, disk_bytes, processes];
stdin = a random token's line, then the program's source.

The rlimits are set as hard limits before the user changes, so the program cannot raise them again.
A uid below 0 means "keep this user" (the sandbox was not started as root, or the weak mode).
The token goes to `done_fd` only after the program's last line returned: `sys.exit(0)`, `os._exit(0)`,
an exception or a kill never write it, so the parent can tell a program that ran to its end.
"""
import os
import resource
import sys


def limit(which, value):
    if value >= 0:
        resource.setrlimit(which, (value, value))


def main():
    done_fd, uid, gid, memory, cpu_s, disk, processes = (int(a) for a in sys.argv[1:8])
    token, _, code = sys.stdin.buffer.read().partition(b"\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program reads an empty stdin, not what the parent sent
    os.close(null)
    limit(resource.RLIMIT_AS, memory)
    limit(resource.RLIMIT_CPU, cpu_s)
    limit(resource.RLIMIT_FSIZE, disk)
    limit(resource.RLIMIT_NPROC, processes)
    limit(resource.RLIMIT_CORE, 0)
    if uid >= 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from uid 0 to another: the kernel clears every capability
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("sandbox: could not leave root")
    sys.argv = ["<program>"]
    exec(compile(code, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(done_fd, token)


if __name__ == "__main__":
    main()
