"""CPU runtime settings for MXNet (OpenMP threads, oneDNN's instruction set), applied before
`import mxnet`.

MXNet 1.9 halves its OpenMP thread count on x86 when OMP_NUM_THREADS is unset (it assumes every
core is two hyper-threads), which leaves half of a machine without SMT idle. Variables the user has
set are left alone.

Threads are not bound to cores (OMP_PROC_BIND): binding pins the main thread to the first core,
and every thread it starts later inherits that single core (the loader's threads, onnxruntime's
pool), which slows them down; binding gave no gain to MXNet itself either (docs/speed.md).

Operator tuning is off (MXNET_USE_OPERATOR_TUNING=0) unless the user has set it. With it on, MXNet
times its own elementwise kernels at import and, from those timings, decides per operator whether
to run it with OpenMP; on a 2-core Zen 3 VM that decision left `elemwise_mul` (swish's product)
about 3x slower than with OpenMP always on, which cost 15-20 % of the D0 forward and of a
training step (docs/speed.md).

Inference caps oneDNN at AVX2 (DNNL_MAX_CPU_ISA) unless the user has set it. On AVX-512 CPUs
oneDNN 2.4 (MXNet 1.9.1's) runs its convolutions in channels-last layouts, and every swish needs
its input in plain layout (the product is not a oneDNN op): converting a channels-last map is a
strided transpose, converting AVX2's 8-channel blocks is nearly a copy. The D0 forward was about
1.3x faster capped than not on an AVX-512 VM; training, whose convolution backward gains more from
AVX-512, was 5-10 % slower capped, so it is left alone. On CPUs without AVX-512 the cap changes
nothing. Outputs stay within the parity tolerance (docs/speed.md).
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


def thread_share(devices):
    """OpenMP threads for each of `devices` CPU contexts or processes that share this machine's
    physical cores, at least 1."""
    return max(1, physical_cores() // max(1, devices))


INFERENCE_ISA = "AVX2"


def configure_cpu(threads=None, devices=1, inference=False):
    """Set OMP_NUM_THREADS unless the user has set it: `threads`, or by default the physical cores
    shared among `devices` CPU contexts (KvstoreParam.cpu_devices), whose operators run side by side,
    so that together they use every core once; MXNET_USE_OPERATOR_TUNING=0 unless set. With
    `inference`, also DNNL_MAX_CPU_ISA = INFERENCE_ISA unless set. Has no effect once mxnet is
    imported, so entry scripts call it first."""
    if "mxnet" in sys.modules:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads or thread_share(devices)))
    os.environ.setdefault("MXNET_USE_OPERATOR_TUNING", "0")
    if inference:
        os.environ.setdefault("DNNL_MAX_CPU_ISA", INFERENCE_ISA)


def cpu_devices_of(argv):
    """KvstoreParam.cpu_devices of the config that `argv` (--config, --set) names, at least 1; 1 when
    it does not load (the entry script then reports why). Needs no mxnet."""
    import argparse
    from utils.config import add_config_args, load_config
    try:
        args, _ = add_config_args(argparse.ArgumentParser(add_help=False)).parse_known_args(argv)
        return max(1, load_config(args.config, args.sets, is_train=False).KvstoreParam.cpu_devices)
    except (Exception, SystemExit):
        return 1
