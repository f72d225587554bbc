"""Training logs: one text log (file + console), the metrics CSVs (training steps; validation) and
their plots."""
import csv
import logging
import math
import os
import sys
import time

from utils.errors import UserError
from utils.fileio import atomic_write

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FIXED_HEAD = ["epoch", "iter", "lr"]
_FIXED_TAIL = ["images_per_s", "wall_time"]
# val_metrics.csv: epochs done, iteration, COCO numbers (core.evaluate.STAT_NAMES), evaluation time
VAL_STATS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"]
VAL_COLUMNS = ["epoch", "iter"] + VAL_STATS + ["seconds", "wall_time"]


def setup_logger(log_path, level=logging.INFO):
    """Send the root logger to `log_path` (appending) and to stderr in one format; return it.

    Calling it again replaces the handlers it added before, so nothing is logged twice.
    """
    folder = os.path.dirname(os.path.abspath(log_path))
    os.makedirs(folder, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_effdet", False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT)
    for handler in (logging.FileHandler(log_path, mode="a"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        handler._effdet = True
        root.addHandler(handler)
    root.setLevel(level)
    return root


class _CsvLog:
    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MetricsWriter(_CsvLog):
    """Append one CSV row per logged step: epoch, iter, lr, <loss terms>, images_per_s, wall_time.

    Each row is flushed. An existing file (a resumed run) is appended to and keeps its header;
    a partial last line left by a crash is cut off first, and with `keep_until` (the iteration of
    the checkpoint a run resumes from) so are the rows of later iterations, which the resumed run
    repeats. The loss-term columns are fixed by the header (or by the first row of a new file): a
    row with other terms is a UserError.
    """

    def __init__(self, csv_path, keep_until=None):
        self.path = csv_path
        self.columns = _reopen(csv_path, keep_until)
        self._file = open(csv_path, "a", newline="")
        self._writer = csv.writer(self._file)

    def write(self, epoch, iteration, lr, losses, images_per_s, wall_time=None):
        """Append a row; `losses` maps term name -> float; wall_time defaults to time.time()."""
        if self.columns is None:
            self.columns = _FIXED_HEAD + list(losses) + _FIXED_TAIL
            self._writer.writerow(self.columns)
        terms = self.columns[len(_FIXED_HEAD):-len(_FIXED_TAIL)]
        if sorted(terms) != sorted(losses):
            raise UserError("metrics %s has loss columns %s, got %s" % (self.path, terms, sorted(losses)))
        wall_time = time.time() if wall_time is None else wall_time
        row = [epoch, iteration, "%.6g" % lr] + ["%.6g" % losses[t] for t in terms]
        self._writer.writerow(row + ["%.2f" % images_per_s, "%.3f" % wall_time])
        self._file.flush()


class ValMetricsWriter(_CsvLog):
    """val_metrics.csv, one row per evaluation during training: VAL_COLUMNS. The training steps'
    metrics.csv keeps its own columns: rows of two kinds in one file would leave half of every row
    empty and break its readers. A resumed run appends as MetricsWriter does (`keep_until`); a file
    with other columns is a UserError."""

    def __init__(self, csv_path, keep_until=None):
        columns = _reopen(csv_path, keep_until)
        if columns is not None and columns != VAL_COLUMNS:
            raise UserError("%s has the columns %s, expected %s" % (csv_path, columns, VAL_COLUMNS))
        self._file = open(csv_path, "a", newline="")
        self._writer = csv.writer(self._file)
        if columns is None:
            self._writer.writerow(VAL_COLUMNS)

    def write(self, epoch, iteration, stats, seconds, wall_time=None):
        """Append a row: `stats` maps VAL_STATS names (and more) to floats."""
        wall_time = time.time() if wall_time is None else wall_time
        self._writer.writerow([epoch, iteration] + ["%.6g" % stats[k] for k in VAL_STATS] +
                              ["%.2f" % seconds, "%.3f" % wall_time])
        self._file.flush()


def _reopen(csv_path, keep_until):
    """Prepare `csv_path` for appending: cut a partial last line (a crash) and, with `keep_until`,
    the rows of later iterations (column 2). Returns the existing header's columns, or None."""
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    if not (os.path.isfile(csv_path) and os.path.getsize(csv_path) > 0):
        return None
    with open(csv_path, "rb") as f:
        lines = f.read().split(b"\n")[:-1]       # the last piece: "" or a cut line
    if keep_until is not None:
        lines = lines[:1] + [l for l in lines[1:] if _iteration(l) <= keep_until]

    def write(tmp):
        with open(tmp, "wb") as f:
            f.writelines(l + b"\n" for l in lines)
    atomic_write(csv_path, write)
    with open(csv_path, newline="") as f:
        return next(csv.reader(f), None)


def _iteration(line):
    """The iter column of a metrics row (bytes); rows that do not parse sort last (dropped)."""
    try:
        return int(line.split(b",")[1])
    except (IndexError, ValueError):
        return float("inf")


def plot_loss_curve(csv_path, png_path):
    """Plot every loss term against iteration, with lr on a twin axis, to `png_path` (Agg).

    When a resumed run repeats iterations, the later rows win, so the curve shows what the
    final weights went through.
    """
    # Figure + FigureCanvasAgg draw without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("wall_time")]   # skip rows cut by a crash
    if not rows:
        raise UserError("no metrics rows in %s to plot" % csv_path)
    by_iter = {}
    for row in rows:
        by_iter[int(row["iter"])] = row
    iters = sorted(by_iter)
    terms = [c for c in rows[0] if c not in _FIXED_HEAD + _FIXED_TAIL]

    def column(name):
        return [float(by_iter[i][name]) if by_iter[i][name] else math.nan for i in iters]

    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for term in terms:
        ax.plot(iters, column(term), label=term, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax_lr = ax.twinx()
    ax_lr.plot(iters, column("lr"), color="gray", linestyle="--", linewidth=1, label="lr")
    ax_lr.set_ylabel("learning rate")
    lines = ax.get_lines() + ax_lr.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_val_curve(csv_path, png_path):
    """Plot AP, AP50 and AP75 of val_metrics.csv against the epoch, the best AP marked, to
    `png_path` (Agg). A resumed run's repeated epochs: the later row wins."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with open(csv_path, newline="") as f:
        by_epoch = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("wall_time")}
    if not by_epoch:
        raise UserError("no validation rows in %s to plot" % csv_path)
    epochs = sorted(by_epoch)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in ("AP", "AP50", "AP75"):
        ax.plot(epochs, [float(by_epoch[e][name]) for e in epochs], marker="o", linewidth=1, label="val " + name)
    best = max(epochs, key=lambda e: (float(by_epoch[e]["AP"]), -e))     # the first epoch of the best AP
    ax.plot([best], [float(by_epoch[best]["AP"])], marker="*", markersize=14, color="k", linestyle="none",
            label="best AP %.3f (epoch %d)" % (float(by_epoch[best]["AP"]), best))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("COCO AP")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
