"""The training loop: a run state that hooks read and change, in the manner of detectron2's HookBase.

`train_loop(run, hooks)` reads top-down: before_train; per epoch before_epoch, per step (one
optimiser update over OptimizeParam.accumulate loader batches) the step then after_step, at the
epoch's end after_epoch; after_train. Hooks run in list order at every point, so a hook that needs
another's work goes after it (the checkpointer saves an interrupted position before the interrupt
hook names it). A hook ends the run early with `run.request_stop(reason, exit_code)`: the loop
stops after the current step's (or epoch's) hooks, and after_train still runs.
"""
import itertools
import logging
import math
import os
import time

import numpy as np
from tqdm import tqdm

from core.optimizer import optimizer_states
from utils.checkpoint import latest_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.logger import MetricsWriter, plot_loss_curve
from utils.resume import StopOnInterrupt, guarded, stop_interrupted

logger = logging.getLogger("train")


class RunState:
    """What the loop and its hooks share.

    Fixed for the run: cfg, mod (the bound Module), step (a TrainStep), loader, exp_dir, rank,
    num_workers, ema (an ExponentialMovingAverage or None), images_per_step (over all workers),
    accumulate (loader batches per update).
    Position: epoch (0-based, the epoch being trained; after_epoch sees the one just finished),
    num_update (optimiser updates done, which the lr schedule, EMA and checkpoints count),
    batch_in_epoch (loader batches of this epoch done, including those a resume skipped).
    losses: the last step's loss values, or None when the step was skipped (fp16 overflow).
    stop_reason / exit_code: set by request_stop.
    hook_state: {hook name: json-able dict} that hooks keep across a resume: every checkpoint
    stores it (manifest extra "hooks") and a resumed run starts with the checkpoint's.
    tensorboard: rank 0's tensorboardX SummaryWriter while the TensorBoard hook has it open, else None.
    """

    def __init__(self, cfg, mod, step, loader, exp_dir, rank=0, num_workers=1, ema=None, epoch=0,
                 num_update=0, batch_in_epoch=0, images_per_step=1, accumulate=1, hook_state=None):
        self.cfg, self.mod, self.step, self.loader, self.ema = cfg, mod, step, loader, ema
        self.accumulate = accumulate
        self.exp_dir, self.rank, self.num_workers, self.images_per_step = exp_dir, rank, num_workers, images_per_step
        self.epoch, self.num_update, self.batch_in_epoch = epoch, num_update, batch_in_epoch
        self.losses, self.stop_reason, self.exit_code = None, None, 0
        self.hook_state, self.tensorboard = dict(hook_state or {}), None

    @property
    def batches_per_epoch(self):
        return self.loader.num_batches

    @property
    def steps_per_epoch(self):
        """Updates per epoch (the last one may take fewer than `accumulate` batches)."""
        return -(-self.loader.num_batches // self.accumulate)

    @property
    def step_in_epoch(self):
        return -(-self.batch_in_epoch // self.accumulate)

    @property
    def loss_names(self):
        return [n.replace("_output", "") for n in self.mod.output_names]

    def add_scalars(self, group, values):
        """TensorBoard scalars `group/name` at the current iteration (rank 0 with the TensorBoard
        hook; a no-op otherwise)."""
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar("%s/%s" % (group, name), value, self.num_update)

    def request_stop(self, reason, exit_code=0):
        """End the run after the hooks of the current step or epoch; the first request wins."""
        if self.stop_reason is None:
            self.stop_reason, self.exit_code = reason, exit_code


class HookBase:
    """A no-op at every point of the loop; subclasses override what they need."""

    def before_train(self, run):
        pass

    def before_epoch(self, run):
        pass

    def after_step(self, run):
        pass

    def after_epoch(self, run):
        pass

    def after_train(self, run):
        pass


def train_loop(run, hooks):
    """Train from run's position to OptimizeParam.schedule.end_epoch or a stop request; returns the
    exit code (0, or what the stop request set). The loader is closed however the loop ends."""
    end_epoch = run.cfg.OptimizeParam.schedule.end_epoch
    try:
        for h in hooks:
            h.before_train(run)
        while run.epoch < end_epoch and run.stop_reason is None:
            _train_epoch(run, hooks)
        for h in hooks:
            h.after_train(run)
    finally:
        run.loader.close()
    if run.exit_code == 0:
        logger.info("finished: %s", run.exp_dir)
    return run.exit_code


def _train_epoch(run, hooks):
    for h in hooks:
        h.before_epoch(run)
    batches = iter(run.loader)
    while True:
        micro = list(itertools.islice(batches, run.accumulate))
        if not micro:
            break
        run.losses = run.step(micro)
        run.num_update += run.losses is not None
        run.batch_in_epoch += len(micro)
        for h in hooks:
            h.after_step(run)
        if run.stop_reason is not None:
            return                       # mid-epoch: after_train saves the position
    run.loader.reset()
    for h in hooks:
        h.after_epoch(run)
    logger.info("epoch %d done (%d iterations, %d unreadable images skipped so far)", run.epoch, run.num_update,
                run.loader.skipped)
    run.epoch += 1
    run.batch_in_epoch = 0


class NonFiniteCheck(HookBase):
    """A NaN/inf loss ends training with one line naming the last good checkpoint (the step's
    gradients were not applied)."""

    def after_step(self, run):
        if run.losses is None or all(math.isfinite(v) for v in run.losses):
            return
        last = latest_checkpoint(run.exp_dir)
        raise UserError("loss is not finite (%s) at epoch %d iteration %d; stopped. Last good checkpoint: %s"
                        % (", ".join("%s=%s" % kv for kv in zip(run.loss_names, run.losses)), run.epoch,
                           run.num_update,
                           "epoch %d iteration %d" % (last["epoch"], last["iteration"]) if last else "none"))


class EMAUpdate(HookBase):
    """Folds the weights into run.ema after every applied update."""

    def after_step(self, run):
        if run.ema is not None and run.losses is not None:
            run.ema.update(*run.mod.get_params())


class MetricsLogger(HookBase):
    """A progress bar per epoch, and every General.log_frequency updates (and at an epoch's end) the
    mean losses of the window, the lr and the speed: on the bar, and on rank 0 to metrics.csv. At a
    normal end rank 0 plots loss_curve.png. `keep_until`: the resumed checkpoint's iteration (rows
    past it are iterations the resumed run repeats)."""

    def __init__(self, keep_until=0):
        self.keep_until, self.metrics, self.bar = keep_until, None, None
        self.window, self.tick = [], time.time()

    def before_train(self, run):
        if run.rank == 0:
            self.metrics = MetricsWriter(os.path.join(run.exp_dir, "metrics.csv"), keep_until=self.keep_until)

    def before_epoch(self, run):
        self.bar = tqdm(total=run.steps_per_epoch, initial=run.step_in_epoch, desc="epoch %d" % run.epoch,
                        dynamic_ncols=True, disable=None)
        self.window, self.tick = [], time.time()

    def after_step(self, run):
        if run.losses is not None:
            self.window.append(run.losses)
        self.bar.update(1)
        if run.step_in_epoch % run.cfg.General.log_frequency and run.batch_in_epoch != run.batches_per_epoch:
            return
        speed = len(self.window) * run.images_per_step / max(time.time() - self.tick, 1e-9)
        mean = np.mean(self.window, axis=0) if self.window else [float("nan")] * len(run.loss_names)
        terms = dict(zip(run.loss_names, (float(v) for v in mean)))
        self.bar.set_postfix(dict(terms, img_s="%.2f" % speed))
        if self.metrics is not None:   # rank 0's losses; speed counts all workers' images
            lr = run.mod._optimizer.learning_rate
            self.metrics.write(run.epoch, run.num_update, lr, terms, speed)
            run.add_scalars("train", dict(terms, lr=lr, images_per_s=speed))
        self.window, self.tick = [], time.time()

    def after_epoch(self, run):
        self.bar.close()

    def after_train(self, run):
        if self.metrics is None:
            return
        self.metrics.close()
        if run.exit_code == 0:
            plot_loss_curve(os.path.join(run.exp_dir, "metrics.csv"), os.path.join(run.exp_dir, "loss_curve.png"))


class TensorBoard(HookBase):
    """Rank 0 opens a tensorboardX writer on <exp_dir>/tensorboard for the others to write through
    (run.add_scalars: the train losses, lr and speed of every metrics row, the val AP), x = the
    iteration. A resumed run purges the events past its checkpoint's iteration, which it repeats.
    Goes first."""

    def before_train(self, run):
        if run.rank == 0:
            from tensorboardX import SummaryWriter   # only rank 0 needs it
            run.tensorboard = SummaryWriter(os.path.join(run.exp_dir, "tensorboard"),
                                            purge_step=run.num_update + 1 if run.num_update else None)

    def after_train(self, run):
        if run.tensorboard is not None:
            run.tensorboard.close()
            run.tensorboard = None


class Checkpointer(HookBase):
    """Rank 0 saves the position every General.checkpoint_iters updates, at every epoch's end (also
    as <name>-EEEE.params) and where a stop request ended an epoch early. `class_names` are recorded
    with the weights. A failed write (full disk) is one line naming the last good checkpoint."""

    def __init__(self, class_names):
        self.class_names = class_names

    def save(self, run, epoch, batch_in_epoch, epoch_end):
        if run.rank != 0:
            return
        g = run.cfg.General

        def write():
            arg, aux = run.mod.get_params()
            save_checkpoint(run.exp_dir, epoch, run.num_update, arg, aux, optimizer_states(run.mod, run.exp_dir),
                            run.ema.state_dict() if run.ema else None,
                            extra={"batch_in_epoch": batch_in_epoch, "loss_scale": run.step.loss_scale,
                                   "iters_per_epoch": run.batches_per_epoch, "accumulate": run.accumulate,
                                   "devices": len(run.mod._context),
                                   "hooks": run.hook_state},
                            epoch_prefix=os.path.join(run.exp_dir, g.name) if epoch_end else None,
                            keep_last=g.keep_last, class_names=self.class_names)
        guarded("saving the checkpoint of epoch %d iteration %d" % (epoch, run.num_update), run.exp_dir, write)

    def after_step(self, run):
        every = run.cfg.General.checkpoint_iters
        if every and run.num_update % every == 0 and run.batch_in_epoch < run.batches_per_epoch:
            self.save(run, run.epoch, run.batch_in_epoch, False)

    def after_epoch(self, run):
        self.save(run, run.epoch + 1, 0, True)

    def after_train(self, run):
        if run.stop_reason is not None and run.batch_in_epoch > 0:
            self.save(run, run.epoch, run.batch_in_epoch, False)


class InterruptHook(HookBase):
    """The first Ctrl-C requests a stop after the current step (exit code 130), so the position is
    saved; a second one stops at once (utils.resume.StopOnInterrupt). Goes after the Checkpointer."""

    def __init__(self):
        self.signal = None

    def before_train(self, run):
        self.signal = StopOnInterrupt(run.exp_dir).install()

    def after_step(self, run):
        if self.signal.requested:
            run.request_stop("interrupted", 130)

    def after_train(self, run):
        self.signal.restore()
        if run.stop_reason == "interrupted":
            stop_interrupted(run.exp_dir)
