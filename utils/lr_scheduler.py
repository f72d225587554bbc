"""Learning-rate schedule: linear warmup, then cosine or step decay.

The schedule is a pure function of the optimizer's update count over absolute epochs
[0, end_epoch), so resuming only needs the optimizer to start counting at the resumed iteration
(`begin_num_update`); `schedule.begin_epoch` is where training starts, not where the curve starts.
"""
import logging
import math

import mxnet as mx

from utils.errors import UserError

log = logging.getLogger(__name__)


class WarmupDecayScheduler(mx.lr_scheduler.LRScheduler):
    """lr(n) for update count n (MXNet passes n = 1 for the first update).

    n < warmup_steps: linear from init_lr_ratio·base_lr (at n = 0) to base_lr (at n = warmup_steps).
    Then "cosine": final_lr + (base_lr − final_lr)·(1 + cos(π·t))/2 with t the fraction of
    [warmup_steps, total_steps] done (t is clamped, so lr stays final_lr past the end);
    or "step": base_lr · factor^(number of step boundaries ≤ n).
    base_lr is read at call time, so an Optimizer that overwrites it stays consistent.
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, init_lr_ratio=0.0, mode="cosine",
                 step_boundaries=(), step_factor=0.1, final_lr=0.0, begin_num_update=0):
        super().__init__(base_lr)
        if mode not in ("cosine", "step"):
            raise UserError("OptimizeParam.schedule.type must be cosine or step, got '%s'" % mode)
        if not 0 <= warmup_steps < total_steps:
            raise UserError("warmup (%d iterations) must be shorter than training (%d iterations)"
                            % (warmup_steps, total_steps))
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.init_lr_ratio = float(init_lr_ratio)
        self.mode = mode
        self.step_boundaries = sorted(int(b) for b in step_boundaries)
        self.step_factor = float(step_factor)
        self.final_lr = float(final_lr)
        self.begin_num_update = int(begin_num_update)   # hand to the optimizer when resuming

    def __call__(self, num_update):
        n = float(num_update)
        if n < self.warmup_steps:
            start = self.init_lr_ratio * self.base_lr
            return start + (self.base_lr - start) * n / self.warmup_steps
        if self.mode == "step":
            passed = sum(1 for b in self.step_boundaries if n >= b)
            return self.base_lr * self.step_factor ** passed
        t = min(1.0, (n - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_lr_scheduler(cfg, num_images, batch_size_total, iters_per_epoch=None, final_lr=0.0):
    """Scheduler from cfg.OptimizeParam with base lr = lr_per_64 · batch_size_total / 64.

    `iters_per_epoch` defaults to ceil(num_images / batch_size_total). Warmup and step epochs may
    be fractional; they are converted to iterations. The returned scheduler's
    `begin_num_update` is schedule.begin_epoch · iters_per_epoch.
    """
    opt = cfg.OptimizeParam
    if batch_size_total <= 0 or num_images <= 0:
        raise UserError("need images and a positive batch to build a schedule (got %d images, batch %d)"
                        % (num_images, batch_size_total))
    if iters_per_epoch is None:
        iters_per_epoch = int(math.ceil(num_images / float(batch_size_total)))
    base_lr = opt.lr_per_64 * batch_size_total / 64.0
    sched = opt.schedule
    if sched.end_epoch <= sched.begin_epoch:
        raise UserError("OptimizeParam.schedule.end_epoch (%s) must exceed begin_epoch (%s)"
                        % (sched.end_epoch, sched.begin_epoch))
    if list(sched.step_epochs) != sorted(sched.step_epochs):
        raise UserError("OptimizeParam.schedule.step_epochs must be increasing, got %s" % (sched.step_epochs,))
    scheduler = WarmupDecayScheduler(
        base_lr=base_lr,
        total_steps=int(round(sched.end_epoch * iters_per_epoch)),
        warmup_steps=int(round(opt.warmup.epochs * iters_per_epoch)),
        init_lr_ratio=opt.warmup.init_lr_ratio,
        mode=sched.type,
        step_boundaries=[round(e * iters_per_epoch) for e in sched.step_epochs],
        step_factor=sched.step_factor,
        final_lr=final_lr,
        begin_num_update=int(round(sched.begin_epoch * iters_per_epoch)))
    log.info("lr: base %.6g (%.6g per 64 images x batch %d), %d images, %d iters/epoch, "
             "warmup %d iters, %s to iteration %d", base_lr, opt.lr_per_64, batch_size_total,
             num_images, iters_per_epoch, scheduler.warmup_steps, sched.type, scheduler.total_steps)
    return scheduler
