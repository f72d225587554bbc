"""OpenMP thread settings for MXNet, applied before `import mxnet`.

MXNet 1.9 halves its OpenMP thread count on x86 when OMP_NUM_THREADS is unset (it assumes every
core is two hyper-threads), which leaves half of a machine without SMT idle. Variables the user has
set are left alone.

Threads are not bound to cores (OMP_PROC_BIND): binding pins the main thread to the first core,
and every thread it starts later inherits that single core (the loader's threads, onnxruntime's
pool), which slows them down; binding gave no gain to MXNet itself either (docs/speed.md).
"""
import os
import sys


def physical_cores():
    """Physical cores among the CPUs this process may run on (hyper-thread siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        path = "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list" % cpu
        try:
            with open(path) as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def configure_threads(threads=None):
    """Set OMP_NUM_THREADS (default: every physical core) unless the user has set it. Has no effect
    once mxnet is imported, so entry scripts call it first."""
    if "mxnet" in sys.modules:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads or physical_cores()))
