#!/usr/bin/env python
"""Per-operator share of a config's forward pass (or, with --train, of a whole training step).

  python scripts/profile_forward.py --config config/efficientdet_b0.py [--train] [--batch 1] [--top 25]

Runs with MXNET_EXEC_BULK_EXEC_INFERENCE/TRAIN=0 so that every operator is timed on its own (bulked
segments would be reported as one opaque entry), then prints each operator's total time and share,
summed over `--iters` profiled runs after warm-up. Random weights and data: only the op mix matters.
"""
import argparse
import os
import sys

# Must be set before mxnet is imported: bulking hides individual operators from the profiler.
os.environ["MXNET_EXEC_BULK_EXEC_INFERENCE"] = "0"
os.environ["MXNET_EXEC_BULK_EXEC_TRAIN"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import configure_cpu  # noqa: E402

configure_cpu(inference="--train" not in sys.argv)  # before mxnet is imported

import json  # noqa: E402
import tempfile  # noqa: E402

import mxnet as mx  # noqa: E402

from utils.config import add_config_args, load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def operator_times(run, iters, warmup):
    """{operator: (calls, total ms)} over `iters` calls of run(), after `warmup` unprofiled calls."""
    for _ in range(warmup):
        run()
    mx.nd.waitall()
    with tempfile.TemporaryDirectory() as tmp:
        mx.profiler.set_config(profile_symbolic=True, profile_imperative=True, profile_memory=False,
                               profile_api=False, aggregate_stats=True,
                               filename=os.path.join(tmp, "profile.json"))
        mx.profiler.set_state("run")
        for _ in range(iters):
            run()
        mx.nd.waitall()
        mx.profiler.set_state("stop")
        stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
    times = {}
    for domain, ops in stats.get("Time", {}).items():
        if not domain.startswith("MXNET_C_API"):
            for name, s in ops.items():
                calls, total = times.get(name, (0, 0.0))
                times[name] = (calls + s["Count"], total + s["Total"])
    return times


def print_table(times, iters, top, unit):
    total = sum(t for _, t in times.values())
    print("%-36s %8s %12s %7s" % ("operator", "calls", "ms per " + unit, "share"))
    rows = sorted(times.items(), key=lambda kv: -kv[1][1])
    for name, (calls, t) in rows[:top]:
        print("%-36s %8d %12.2f %6.1f%%" % (name[:36], calls // iters, t / iters, 100.0 * t / total))
    rest = sum(t for _, (_, t) in rows[top:])
    if rest:
        print("%-36s %8s %12.2f %6.1f%%" % ("(other %d ops)" % (len(rows) - top), "", rest / iters,
                                            100.0 * rest / total))
    print("%-36s %8s %12.2f" % ("total operator time", "", total / iters))


def forward_runner(cfg, batch):
    from scripts.benchmark_forward import bound_forward_module
    mod, data = bound_forward_module(cfg, batch)

    def run():
        mod.forward(data, is_train=False)
        for out in mod.get_outputs():
            out.wait_to_read()
    return run


def train_runner(cfg, batch):
    from scripts.benchmark_train import bound_train_step
    step, data = bound_train_step(cfg, batch)

    def run():
        step([data])
        mx.nd.waitall()
    return run


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--train", action="store_true", help="profile a training step instead")
    parser.add_argument("--batch", type=int, default=None, help="default: 1 (forward), 4 (--train)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=args.train)
    batch = args.batch or (4 if args.train else 1)
    run = (train_runner if args.train else forward_runner)(cfg, batch)
    times = operator_times(run, args.iters, args.warmup)
    print("%s %s, batch %d, image %s, %d profiled runs" % (cfg.General.name, "training step" if args.train
          else "forward", batch, "x".join(map(str, cfg.DatasetParam.image_size)), args.iters))
    print_table(times, args.iters, args.top, "step" if args.train else "forward")
    return 0


if __name__ == "__main__":
    run_cli(main)
