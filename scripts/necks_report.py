#!/usr/bin/env python
"""Turn the measurements of scripts/compare_necks.sh into a markdown table and a plot.

  python scripts/necks_report.py --out docs/necks.md --plot docs/necks.png --load "1.2 1.5 1.9" \
      BiFPN=experiments/necks/bifpn NAS-FPN=experiments/necks/nasfpn

Each LABEL=DIR holds what compare_necks.sh wrote for one neck: stats.json (model_stats --json),
bench.txt (benchmark_forward.py lines, one per round), eval.json (detection_test.py's COCO report),
train_seconds and config. Everything after the NOTES_MARKER line of an existing --out file (a
hand-written reading) is kept, so re-running refreshes the numbers without losing it.
"""
import argparse
import datetime
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402

NOTES_MARKER = "<!-- Hand-written reading below: kept when scripts/necks_report.py regenerates this file. -->"


def read_run(label, path):
    """One neck's measurements as a dict; a missing file is a one-line error naming it."""
    def text(name):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise UserError("%s: missing %s (run scripts/compare_necks.sh)" % (label, full))
        return open(full).read()

    stats, report = json.loads(text("stats.json")), json.loads(text("eval.json"))
    rounds = [(float(a), float(b)) for a, b in re.findall(r"median ([\d.]+) ms/img \(min ([\d.]+)", text("bench.txt"))]
    if not rounds:
        raise UserError("%s: no 'median ... ms/img' line in %s" % (label, os.path.join(path, "bench.txt")))
    return {"label": label, "config": text("config").strip(), "params": stats["params"], "flops": stats["flops"],
            "size": stats["image_size"], "ms": float(np.median([m for m, _ in rounds])),
            "ms_rounds": [m for m, _ in rounds], "ms_best": min(b for _, b in rounds),
            "ap": report["stats"]["AP"], "ap50": report["stats"]["AP50"],
            "train_min": float(text("train_seconds")) / 60.0}


def machine_note(load):
    """CPU model, core count and the load average `load` measured after the benchmarks (shared machine)."""
    model = "unknown CPU"
    if os.path.isfile("/proc/cpuinfo"):
        names = re.findall(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read())
        model = names[0].strip() if names else model
    return "%s, %d cores, shared with other jobs (load average %s right after the forward benchmarks)" % (
        model, os.cpu_count(), load)


def table(runs):
    base = runs[0]
    lines = ["| neck | config | params | multiply-adds | forward ms/img (median) | fastest ms | AP | AP50 "
             "| train + eval min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        ratio = "" if r is base else " (%.2fx)" % (r["ms"] / base["ms"])
        lines.append("| %s | `%s` | %s | %.2f B | %.1f%s | %.1f | %.3f | %.3f | %.1f |" % (
            r["label"], r["config"], format(r["params"], ","), r["flops"] / 1e9, r["ms"], ratio, r["ms_best"], r["ap"],
            r["ap50"],
            r["train_min"]))
    return "\n".join(lines)


def reading(runs):
    """The comparison in words, each run against the first: only what the numbers say."""
    base, out = runs[0], []
    for r in runs[1:]:
        out.append("- %s against %s: %s parameters (%.2fx), %.2fx the multiply-adds, %.2fx the forward time, "
                   "AP %+.3f (AP50 %+.3f), %.2fx the train + eval wall time (load-dependent)." % (
                       r["label"], base["label"], format(r["params"] - base["params"], "+,"),
                       r["params"] / base["params"],
                       r["flops"] / base["flops"], r["ms"] / base["ms"], r["ap"] - base["ap"],
                       r["ap50"] - base["ap50"], r["train_min"] / base["train_min"]))
    return "\n".join(out)


def plot(runs, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.scatter(r["ms"], r["ap"], s=60, alpha=0.8, label="%s: %.2fM params, %.2f B mult-adds" % (
            r["label"], r["params"] / 1e6, r["flops"] / 1e9))
        ax.plot(r["ms_rounds"], [r["ap"]] * len(r["ms_rounds"]), "|", color="gray", alpha=0.6)
    ax.plot([], [], "|", color="gray", label="per-round medians")
    ms, ap = [m for r in runs for m in r["ms_rounds"]], [r["ap"] for r in runs]
    ax.set_xlim(0, max(ms) * 1.15)
    ax.set_ylim(max(0.0, min(ap) - 0.1), min(1.0, max(ap) + 0.1))
    ax.set_xlabel("forward ms / image (median, %dx%d, batch 1, CPU)" % tuple(runs[0]["size"]))
    ax.set_ylabel("COCO AP@[.5:.95], synthetic val")
    ax.set_title("Neck comparison: AP against speed")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--plot", required=True, help="PNG of AP against ms/img")
    parser.add_argument("--load", required=True, help="1, 5 and 15 min load averages after the benchmarks")
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR", help="the first run is the baseline")
    args = parser.parse_args()
    if any("=" not in r for r in args.runs):
        raise UserError("runs must look like LABEL=DIR, got %s" % args.runs)
    read = [os.path.join(r.split("=", 1)[1], n) for r in args.runs
            for n in ("stats.json", "eval.json", "bench.txt", "config", "train_seconds")]
    refuse_overwrite([("--out", args.out), ("--plot", args.plot)], [("a run's file", p) for p in read])
    runs = [read_run(*r.split("=", 1)) for r in args.runs]
    notes = ""
    if os.path.isfile(args.out) and NOTES_MARKER in open(args.out).read():
        notes = open(args.out).read().split(NOTES_MARKER, 1)[1]
    plot(runs, args.plot)
    # The date of the measurements, not of this (re)generation.
    measured = datetime.date.fromtimestamp(os.path.getmtime(os.path.join(args.runs[0].split("=", 1)[1], "bench.txt")))
    rounds = "; ".join("%s %s" % (r["label"], ", ".join("%.1f" % m for m in r["ms_rounds"])) for r in runs)
    doc = "\n".join([
        "# BiFPN against NAS-FPN",
        "",
        "Measured by `scripts/compare_necks.sh` on %s." % measured,
        "Machine: %s. Timings on a shared machine are noisy: compare them as ratios within one run." % (
            machine_note(args.load)),
        "",
        "Both models: the quickstart setup (EfficientNet-B0 from scratch, head 2, %dx%d input, the synthetic "
        "shapes dataset, the same recipe and epochs); only the neck differs. Parameters and multiply-adds from "
        "`scripts/model_stats.py`, forward time from `scripts/benchmark_forward.py` (median of the per-round "
        "medians, rounds alternating between the necks: %s ms; fastest single iteration beside them), AP from "
        "`detection_test.py` on the validation split." % (tuple(runs[0]["size"]) + (rounds,)),
        "",
        table(runs),
        "",
        "![AP against forward time](%s)" % os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.out))),
        "",
        "## Reading",
        "",
        reading(runs),
        "",
        NOTES_MARKER,
    ]) + (notes or "\n")
    with open(args.out, "w") as f:
        f.write(doc)
    print("wrote %s and %s" % (args.out, args.plot))
    return 0


if __name__ == "__main__":
    run_cli(main)
