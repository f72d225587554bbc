"""utils.logger: CSV appends across writers (resume), crash-cut lines, plot, log file."""
import csv
import logging

import pytest

from utils.errors import UserError
from utils.logger import MetricsWriter, plot_loss_curve, setup_logger


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_appends_across_writers_with_one_header(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    with MetricsWriter(str(path)) as w:
        w.write(0, 10, 0.01, {"cls_loss": 1.5, "box_loss": 0.5}, 12.0, wall_time=100.0)
        w.write(0, 20, 0.02, {"cls_loss": 1.2, "box_loss": 0.4}, 12.5, wall_time=110.0)
    with MetricsWriter(str(path)) as w:   # a resumed run
        w.write(1, 30, 0.03, {"box_loss": 0.3, "cls_loss": 1.0}, 13.0, wall_time=120.0)
    rows = _rows(path)
    assert rows[0] == ["epoch", "iter", "lr", "cls_loss", "box_loss", "images_per_s", "wall_time"]
    assert [r[1] for r in rows[1:]] == ["10", "20", "30"]
    assert rows[3][3:5] == ["1", "0.3"]
    with MetricsWriter(str(path)) as w, pytest.raises(UserError, match="loss columns"):
        w.write(1, 40, 0.03, {"total": 1.0}, 13.0)


def test_partial_line_from_a_crash_is_cut(tmp_path):
    path = tmp_path / "metrics.csv"
    with MetricsWriter(str(path)) as w:
        w.write(0, 10, 0.01, {"loss": 1.0}, 10.0)
    with open(path, "a") as f:
        f.write("0,20,0.0")   # killed mid-row
    with MetricsWriter(str(path)) as w:
        w.write(0, 20, 0.01, {"loss": 0.9}, 10.0)
    assert [r[1] for r in _rows(path)[1:]] == ["10", "20"]


def test_plot_writes_a_png(tmp_path):
    csv_path, png = str(tmp_path / "m.csv"), tmp_path / "plots" / "loss.png"
    with MetricsWriter(csv_path) as w:
        for it in range(1, 30):
            w.write(it // 10, it, 0.01 * min(it, 10) / 10, {"cls_loss": 2.0 / it, "box_loss": 1.0 / it}, 9.0)
        w.write(2, 25, 0.01, {"cls_loss": 0.5, "box_loss": 0.1}, 9.0)   # resumed: iteration repeats
    plot_loss_curve(csv_path, str(png))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert [p.name for p in png.parent.iterdir()] == ["loss.png"]


def test_plot_of_empty_csv_is_a_user_error(tmp_path):
    (tmp_path / "m.csv").write_text("epoch,iter,lr,loss,images_per_s,wall_time\n")
    with pytest.raises(UserError, match="no metrics rows"):
        plot_loss_curve(str(tmp_path / "m.csv"), str(tmp_path / "x.png"))


def test_setup_logger_file_and_no_duplicates(tmp_path):
    log_path = tmp_path / "logs" / "train.log"
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logger(str(log_path))
        setup_logger(str(log_path))   # twice: handlers replaced, not stacked
        logging.getLogger("effdet.test").info("hello %d", 7)
        for h in root.handlers:
            h.flush()
        lines = log_path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].endswith("INFO effdet.test: hello 7")
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
            h.close()
