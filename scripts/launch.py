#!/usr/bin/env python
"""Start a distributed MXNet job (kvstore dist_sync) with one command: a scheduler, S servers and
W workers, all running COMMAND.

  python scripts/launch.py --launcher local -n 2 -s 1 -- python detection_train.py --config ...
  python scripts/launch.py --launcher ssh -H hosts.txt -n 4 -s 2 --port 9091 -- \\
      .venv/bin/python detection_train.py --config ...

Each process gets the ps-lite environment: DMLC_ROLE (scheduler | server | worker),
DMLC_PS_ROOT_URI / DMLC_PS_ROOT_PORT (the scheduler's address), DMLC_NUM_SERVER, DMLC_NUM_WORKER.
`import mxnet` turns a server or scheduler process into one and exits when the job ends, so the
same command serves every role. Output is streamed line by line as `[worker 0] ...`,
`[server 0] ...`, `[scheduler] ...`; the worker index is the launcher's, the kvstore rank is given
by the scheduler in order of registration (detection_train.py logs its own).

local: every process on this machine, scheduler on 127.0.0.1 and a free port (unless --port).
ssh:   hosts from -H (one per line, `[user@]host[:slots]`, `#` comments). The scheduler runs on
       the first host, servers go round-robin over the hosts, workers fill each host's slots in
       order (then wrap around). Each process is `ssh -tt host 'cd DIR && env DMLC_...=... COMMAND'`
       with DIR the current directory (or --workdir), so the code and COMMAND's paths must exist
       there on every host. -tt gives the remote process a terminal: when the launcher stops a
       local ssh client, the remote side gets SIGHUP and exits. --dry-run prints the commands.

Supervision (nothing waits forever; MXNet workers whose peer died block for good):
- a process that exits non-zero or is killed stops all the others; the launcher exits with its
  code (128 + signal for a killed one);
- a clean exit starts the shutdown clock: every other process must exit within --finish-timeout
  seconds, else all are stopped; that is a failure unless every worker had succeeded (ps-lite
  ends the scheduler and the servers by itself once all workers finish, within a second here);
- stopping = SIGTERM to each process group, SIGKILL after --grace seconds. Ctrl-C or SIGTERM to
  the launcher stops everything too (exit 130 / 143).
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import thread_share  # noqa: E402

POLL = 0.1          # seconds between checks of the children


def parse_hostfile(path):
    """[(host, slots)] from a hostfile: `[user@]host[:slots]` per line, blank lines and # comments
    ignored."""
    hosts = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            host, _, slots = line.partition(":")
            if not host or (slots and (not slots.isdigit() or int(slots) < 1)):
                raise SystemExit("error: %s line %d: expected host or host:slots, got %r" % (path, number, line))
            hosts.append((host, int(slots or 1)))
    if not hosts:
        raise SystemExit("error: hostfile %s lists no hosts" % path)
    return hosts


def free_port():
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(num_workers, num_servers, hosts):
    """[(role, index, host)] for the scheduler, the servers and the workers; host None = local."""
    if hosts is None:
        return ([("scheduler", 0, None)] + [("server", i, None) for i in range(num_servers)]
                + [("worker", i, None) for i in range(num_workers)])
    names = [h for h, _ in hosts]
    slots = [h for h, n in hosts for _ in range(n)]
    return ([("scheduler", 0, names[0])] + [("server", i, names[i % len(names)]) for i in range(num_servers)]
            + [("worker", i, slots[i % len(slots)]) for i in range(num_workers)])


def role_env(role, root_uri, port, num_workers, num_servers):
    return {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": root_uri, "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NUM_SERVER": str(num_servers), "DMLC_NUM_WORKER": str(num_workers)}


def ssh_command(ssh, host, workdir, env, command):
    """argv of `ssh -tt host 'cd DIR && env K=V ... COMMAND'`, every piece quoted for the remote shell."""
    remote = "cd %s && env %s %s" % (shlex.quote(workdir),
                                     " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in sorted(env.items())),
                                     " ".join(shlex.quote(a) for a in command))
    return shlex.split(ssh) + ["-tt", host, remote]


class Child:
    """One launched process: its own session (so its whole process group can be signalled) and a
    thread copying its output with a `[role i]` prefix."""

    def __init__(self, role, index, argv, env, out_lock):
        self.name = role if role == "scheduler" else "%s %d" % (role, index)
        self.role = role
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._lock = out_lock
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            # ssh -tt ends lines with \r\n; progress bars use bare \r.
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "\n")
            emit(self._lock, "\n".join("[%s] %s" % (self.name, part) for part in line.split("\n")))

    def poll(self):
        return self.proc.poll()

    def signal(self, sig):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def drain(self, timeout=2.0):
        self._thread.join(timeout)


def emit(lock, text):
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def describe(code):
    return "was killed by %s" % signal.Signals(-code).name if code < 0 else "exited with code %d" % code


def stop_all(children, grace, lock):
    """SIGTERM every running process group, SIGKILL what is left after `grace` seconds."""
    for c in children:
        c.signal(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(c.poll() is None for c in children):
        time.sleep(POLL)
    for c in children:
        if c.poll() is None:
            emit(lock, "[launcher] %s ignored SIGTERM for %.0f s: SIGKILL" % (c.name, grace))
            c.signal(signal.SIGKILL)
    for c in children:
        try:
            c.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emit(lock, "[launcher] %s (pid %d) survived SIGKILL" % (c.name, c.proc.pid))
        c.drain()


def supervise(children, interrupted, finish_timeout, grace, lock):
    """Wait for the job; return the launcher's exit code (see the module docstring).
    `interrupted` collects the signals the launcher received."""
    first_exit = None
    while True:
        if interrupted:
            emit(lock, "[launcher] %s: stopping all processes" % signal.Signals(interrupted[0]).name)
            stop_all(children, grace, lock)
            return 128 + interrupted[0]
        codes = [c.poll() for c in children]
        failed = next((c for c, code in zip(children, codes) if code not in (None, 0)), None)
        if failed is not None:
            code = failed.poll()
            emit(lock, "[launcher] %s %s: stopping the others" % (failed.name, describe(code)))
            stop_all(children, grace, lock)
            return code if code > 0 else 128 - code
        if all(code == 0 for code in codes):
            for c in children:
                c.drain()
            emit(lock, "[launcher] all %d processes finished" % len(children))
            return 0
        if first_exit is None and 0 in codes:
            first_exit = time.time()
        if first_exit is not None and time.time() - first_exit > finish_timeout:
            left = ", ".join(c.name for c, code in zip(children, codes) if code is None)
            workers_done = all(code == 0 for c, code in zip(children, codes) if c.role == "worker")
            emit(lock, "[launcher] %s still running %.0f s after the first clean exit: stopping%s"
                 % (left, finish_timeout, " (every worker succeeded)" if workers_done else ""))
            stop_all(children, grace, lock)
            return 0 if workers_done else 1
        time.sleep(POLL)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launcher", choices=("local", "ssh"), default="local")
    parser.add_argument("-n", "--num-workers", type=int, required=True)
    parser.add_argument("-s", "--num-servers", type=int, default=1)
    parser.add_argument("-H", "--hostfile", help="ssh: one host per line, [user@]host[:slots]")
    parser.add_argument("--port", type=int, help="scheduler port (local: a free one; ssh: 9091)")
    parser.add_argument("--workdir", default=os.getcwd(), help="ssh: directory to run COMMAND in on every host")
    parser.add_argument("--ssh", default="ssh -o BatchMode=yes", help="ssh client and its options")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every process (repeatable), e.g. DMLC_INTERFACE=eth0")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    parser.add_argument("--finish-timeout", type=float, default=60.0,
                        help="seconds the others may run after the first clean exit")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.num_workers < 1 or args.num_servers < 1:
        parser.error("need at least one worker and one server")
    extra = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error("--env expects KEY=VALUE, got %r" % item)
        extra[key] = value

    if args.launcher == "local":
        hosts, root = None, "127.0.0.1"
        port = args.port or free_port()
        # ps-lite would advertise the address of the first network interface; loopback always works.
        # The workers share this machine's cores: each gets its share of OpenMP threads (utils/cpu.py
        # would otherwise give every worker all of them).
        threads = os.environ.get("OMP_NUM_THREADS", str(thread_share(args.num_workers)))
        extra = dict({"DMLC_NODE_HOST": "127.0.0.1", "OMP_NUM_THREADS": threads}, **extra)
    else:
        if not args.hostfile:
            parser.error("--launcher ssh needs -H HOSTFILE")
        try:
            hosts = parse_hostfile(args.hostfile)
        except OSError as e:
            parser.error("cannot read the hostfile: %s" % e)
        root, port = hosts[0][0].rpartition("@")[2], args.port or 9091

    jobs = []
    for role, index, host in plan(args.num_workers, args.num_servers, hosts):
        env = dict(role_env(role, root, port, args.num_workers, args.num_servers), **extra)
        if host is None:
            jobs.append((role, index, command, dict(os.environ, **env)))
        else:
            jobs.append((role, index, ssh_command(args.ssh, host, args.workdir, env, command), None))
    if args.dry_run:
        for role, index, argv, env in jobs:
            prefix = "" if env is None else "env %s " % " ".join(
                "%s=%s" % (k, shlex.quote(env[k])) for k in sorted(env) if k.startswith("DMLC_"))
            print("%s %d: %s%s" % (role, index, prefix, shlex.join(argv)))
        return 0

    # Ctrl-C reaches the launcher only (the children have their own sessions); from here on it is
    # noted and handled by supervise(), so a signal while starting leaves no process behind.
    interrupted = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: interrupted.append(signum))
    lock = threading.Lock()
    emit(lock, "[launcher] %s: scheduler %s:%d, %d server(s), %d worker(s)"
         % (args.launcher, root, port, args.num_servers, args.num_workers))
    children = []
    try:
        for role, index, argv, env in jobs:
            children.append(Child(role, index, argv, env, lock))
            emit(lock, "[launcher] started %s (pid %d)" % (children[-1].name, children[-1].proc.pid))
    except OSError as e:
        emit(lock, "[launcher] cannot start %s: %s" % (argv[0], e))
        stop_all(children, args.grace, lock)
        return 1
    return supervise(children, interrupted, args.finish_timeout, args.grace, lock)


if __name__ == "__main__":
    sys.exit(main())
