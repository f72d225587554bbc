"""Validation during training (TestParam.eval_every): COCO AP on the val roidb, the best
checkpoint, and early stopping (OptimizeParam.early_stop_patience), as a hook of core.hooks.

Outputs (rank 0) in experiments/<name>/:
  val_metrics.csv       one row per evaluation (utils.logger.VAL_COLUMNS)
  val_curve.png         AP, AP50, AP75 per epoch, the best marked (at a normal end)
  <name>-best.params    the evaluated weights of the best epoch by AP, in the format of the
                        per-epoch files (utils.checkpoint.save_epoch_params), written atomically
  <name>-best.json      {"epoch", "iteration", "AP", "AP50", "AP75", "ema", "params", "val_roidb"},
                        written after the .params file
and TensorBoard scalars val/AP, val/AP50, val/AP75.
"""
import json
import logging
import os
import time

from core.hooks import HookBase
from utils.checkpoint import save_epoch_params
from utils.fileio import write_json
from utils.logger import ValMetricsWriter, plot_val_curve
from utils.resume import guarded

logger = logging.getLogger("train")


def best_paths(exp_dir, name):
    """(<name>-best.params, <name>-best.json) in exp_dir."""
    stem = os.path.join(exp_dir, name + "-best")
    return stem + ".params", stem + ".json"


def read_best(json_path):
    """The record of <name>-best.json, or None when there is none (or it does not parse: a record
    is written whole, so that is not a file of ours)."""
    try:
        with open(json_path) as f:
            record = json.load(f)
        return record if isinstance(record, dict) and "AP" in record else None
    except (OSError, ValueError):
        return None


class Validation(HookBase):
    """Every TestParam.eval_every epochs, and after the last one, score the weights used for
    evaluation (the EMA's when OptimizeParam.ema_decay > 0) with `validator` (core.validation).

    Improvement is a strictly higher AP than the best so far. With early_stop_patience P > 0, an
    evaluation P or more epochs after the best epoch ends the run (exit code 0). The best so far
    lives in run.hook_state["validation"], which every checkpoint carries, so a resumed run goes on
    counting from the same best epoch; every rank holds the same AP, hence the same decisions.
    The best file is replaced only by a better AP than the one it records: a run killed after
    writing it and before its next checkpoint does not lose it on resume.
    Goes before the Checkpointer, whose epoch-end checkpoint then holds this epoch's result.
    """

    def __init__(self, validator, class_names, resumed_at=None):
        """resumed_at: the iteration of the checkpoint a resumed run starts from (None: a fresh run)."""
        self.validator, self.class_names, self.resumed_at = validator, class_names, resumed_at
        self.csv, self.on_disk = None, None

    def before_train(self, run):
        state = run.hook_state.setdefault("validation", {"best": None, "last_epoch": None})
        if run.rank == 0:
            self.csv = ValMetricsWriter(os.path.join(run.exp_dir, "val_metrics.csv"), keep_until=self.resumed_at or 0)
            # A fresh run starts a new best; a resumed one keeps what its predecessor wrote.
            self.on_disk = read_best(self._paths(run)[1]) if self.resumed_at is not None else None
        if state["last_epoch"] == run.epoch and run.batch_in_epoch == 0 and self._exhausted(run, run.epoch):
            self._stop(run, run.epoch)    # the resumed run had already stopped early

    def _paths(self, run):
        return best_paths(run.exp_dir, run.cfg.General.name)

    def _due(self, run, done):
        return done % run.cfg.TestParam.eval_every == 0 or done == run.cfg.OptimizeParam.schedule.end_epoch

    def _exhausted(self, run, done):
        best, patience = run.hook_state["validation"]["best"], run.cfg.OptimizeParam.early_stop_patience
        return patience > 0 and best is not None and done - best["epoch"] >= patience

    def _stop(self, run, done):
        best = run.hook_state["validation"]["best"]
        logger.info("early stop after epoch %d: no better val AP for %d epochs (OptimizeParam.early_stop_patience"
                    "=%d); best AP %.4f at epoch %d", done, done - best["epoch"],
                    run.cfg.OptimizeParam.early_stop_patience, best["AP"], best["epoch"])
        run.request_stop("early stop")

    def after_epoch(self, run):
        done = run.epoch + 1                       # epochs trained so far
        if not self._due(run, done):
            return
        arg, aux = run.ema.params() if run.ema is not None else run.mod.get_params()
        report = self.validator(arg, aux)
        stats, state = report["stats"], run.hook_state["validation"]
        improved = state["best"] is None or stats["AP"] > state["best"]["AP"]
        if improved:
            state["best"] = {"epoch": done, "iteration": run.num_update,
                             "AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"]}
        state["last_epoch"] = done
        if run.rank == 0:
            self._record(run, done, report, improved, arg, aux)
        if self._exhausted(run, done):
            self._stop(run, done)

    def _record(self, run, done, report, improved, arg, aux):
        stats, best = report["stats"], run.hook_state["validation"]["best"]
        logger.info("val after %d epochs: AP %.4f AP50 %.4f AP75 %.4f (%d images, %.1f s)%s", done, stats["AP"],
                    stats["AP50"], stats["AP75"], len(self.validator.roidb), report["seconds"],
                    ", a new best" if improved else "; best %.4f after epoch %d" % (best["AP"], best["epoch"]))
        self.csv.write(done, run.num_update, stats, report["seconds"])
        run.add_scalars("val", {k: stats[k] for k in ("AP", "AP50", "AP75")})
        if not improved:
            return
        if self.on_disk is not None and self.on_disk["AP"] >= stats["AP"]:
            logger.info("kept %s: its AP %.4f (epoch %d, left by the run before this resume) is higher",
                        self._paths(run)[0], self.on_disk["AP"], self.on_disk["epoch"])
            return
        params_path, json_path = self._paths(run)
        record = dict(best, ema=run.ema is not None, params=os.path.basename(params_path),
                      val_roidb=os.path.abspath(run.cfg.DatasetParam.val_roidb), time=time.time())

        def write():
            save_epoch_params(params_path, arg, aux, self.class_names)
            write_json(json_path, record)
        guarded("saving the best weights (epoch %d)" % done, run.exp_dir, write)
        self.on_disk = record

    def after_train(self, run):
        if self.csv is None:
            return
        self.csv.close()
        best = run.hook_state["validation"]["best"]
        if best is not None:
            shown = self.on_disk if self.on_disk is not None and self.on_disk["AP"] > best["AP"] else best
            logger.info("best val AP %.4f at epoch %d: %s", shown["AP"], shown["epoch"], self._paths(run)[0])
            if run.exit_code == 0:
                plot_val_curve(os.path.join(run.exp_dir, "val_metrics.csv"),
                               os.path.join(run.exp_dir, "val_curve.png"))
