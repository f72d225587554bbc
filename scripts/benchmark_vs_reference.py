#!/usr/bin/env python
"""Speed against the reference implementation (effdet, PyTorch), measured alternately in one run.

  python scripts/benchmark_vs_reference.py --ref-python /tmp/ptv/bin/python [--rounds 3]
      [--what forward train onnx] [--config config/efficientdet_b0.py]

Build the reference environment once with ../shared/tools/setup_reference_env.sh DIR; DIR/bin/python
is --ref-python. Each round runs, one after the other in fresh processes, our timing script and the
reference's (../shared/tools/effdet_bench.py, or --ref-bench), so both see the same machine state.
Printed per measurement: the median over rounds of each side's median, and the ratio reference time
/ our time (above 1 means we are faster). Absolute times vary 2x between machines of one kind: only
the ratio is a property of the software. On a VM, each round also shows the share of CPU time the
hypervisor gave to other guests while it ran ("steal", from /proc/stat): a round with a high share
on one side only is the machine's noise, not the software's.

  forward  D0 network at 512, batch 1 (MXNet, no post-processing)  vs effdet forward, batch 1
  train    forward, loss, backward and SGD step at batch 4           vs effdet training step
  onnx     deploy graph in onnxruntime, post-processing included     vs effdet forward (no NMS)

This project never imports torch: the reference runs only in the --ref-python interpreter.
"""
import argparse
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BENCH = os.path.join(os.path.dirname(ROOT), "shared", "tools", "effdet_bench.py")
# Ours: the project's scripts, parsed for "median X ms/img" (or "median X s/step" at `batch`).
MEASUREMENTS = {
    "forward": (["scripts/benchmark_forward.py", "--batch", "1", "--iters", "10"], ["forward", "1", "10"]),
    "train": (["scripts/benchmark_train.py", "--batch", "4", "--iters", "3"], ["train", "4", "3"]),
    "onnx": (["detection_infer_speed.py", "--backend", "onnxruntime", "--batch", "1", "--iters", "10"],
             ["forward", "1", "10"]),
}


def ms_per_image(output, batch):
    """ms/img from a timing script's output: 'median X ms/img', 'median X s/step' or 'ms/img: X'."""
    m = re.search(r"median ([\d.]+) ms/img", output) or re.search(r"median ms/img: ([\d.]+)", output)
    if m:
        return float(m.group(1))
    m = re.search(r"median ([\d.]+) s/step", output)
    if m:
        return float(m.group(1)) * 1000.0 / batch
    raise RuntimeError("no timing in the output:\n" + output[-2000:])


def cpu_ticks():
    """(steal, total) CPU ticks of the machine from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def run(cmd, env=None):
    """(output, steal share during the run or None) of a timing script run in a fresh process."""
    before = cpu_ticks()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    after = cpu_ticks()
    if res.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), res.returncode, res.stderr[-3000:]))
    steal = None
    if before and after and after[1] > before[1]:
        steal = (after[0] - before[0]) / float(after[1] - before[1])
    return res.stdout + res.stderr, steal


def timing(output_and_steal, batch):
    """(ms/img, 'X ms/img (steal Y%)') of one run's (output, steal share)."""
    output, steal = output_and_steal
    ms = ms_per_image(output, batch)
    return ms, "%.1f ms/img%s" % (ms, "" if steal is None else " (steal %.0f%%)" % (100 * steal))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-python", required=True, help="python of the reference venv (torch, effdet)")
    parser.add_argument("--ref-bench", default=DEFAULT_BENCH, help="the reference timing script")
    parser.add_argument("--config", default="config/efficientdet_b0.py")
    parser.add_argument("--variant", default="tf_efficientdet_d0", help="effdet model name")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--what", nargs="+", choices=sorted(MEASUREMENTS), default=["forward", "train", "onnx"])
    args = parser.parse_args()
    for path, what in ((args.ref_python, "--ref-python"), (args.ref_bench, "--ref-bench")):
        if not os.path.isfile(path):
            sys.exit("error: %s not found: %s (build it with ../shared/tools/setup_reference_env.sh)" % (what, path))

    sys.path.insert(0, ROOT)
    from utils.cpu import physical_cores
    cores = str(physical_cores())
    ref_env = dict(os.environ, REF_THREADS=os.environ.get("REF_THREADS", cores))
    size = ["--set", "DatasetParam.image_size=(%d, %d)" % (args.size, args.size)]
    print("%d physical cores; reference threads %s; %d rounds, ours then the reference in each"
          % (int(cores), ref_env["REF_THREADS"], args.rounds), flush=True)
    rows = []
    for what in args.what:
        ours_args, ref_args = MEASUREMENTS[what]
        batch = int(ref_args[1])
        ours, theirs = [], []
        for r in range(args.rounds):
            ms, ours_text = timing(run([sys.executable] + ours_args + ["--config", args.config] + size), batch)
            ours.append(ms)
            ms, ref_text = timing(run([args.ref_python, args.ref_bench, ref_args[0], args.variant,
                                       str(args.size)] + ref_args[1:], ref_env), batch)
            theirs.append(ms)
            print("  %-8s round %d: ours %s, reference %s, ratio %.2f"
                  % (what, r + 1, ours_text, ref_text, theirs[-1] / ours[-1]), flush=True)
        rows.append((what, float(np.median(ours)), float(np.median(theirs))))
    print("\n%-8s %14s %18s %8s" % ("what", "ours ms/img", "reference ms/img", "ratio"))
    for what, ours, theirs in rows:
        print("%-8s %14.1f %18.1f %7.2fx" % (what, ours, theirs, theirs / ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
