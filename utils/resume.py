"""Where a resumed run continues, and how a training run stops when it cannot go on: a save or an
optimiser-state restore that fails (full disk, file-size limit), or Ctrl-C.

None of these may lose data: a checkpoint only counts once complete (utils/checkpoint.py), so the
messages name the newest complete one, which a failed save leaves intact.
"""
import errno
import logging
import math
import os
import signal
import sys

from utils.checkpoint import latest_checkpoint
from utils.errors import UserError

logger = logging.getLogger(__name__)


def resume_position(manifest, batches_per_epoch, begin_epoch=0, accumulate=1):
    """(iteration, batch in the epoch) to continue from: iterations count optimiser updates, batches
    count loader batches (an update takes `accumulate` of them; an epoch's last update may take
    fewer, so an epoch has ceil(batches_per_epoch / accumulate) updates).

    A checkpoint records the loader batches per epoch and the accumulation of the run that wrote it
    (manifest extra "iters_per_epoch", "accumulate"). When either differs (another
    General.batch_image, number of devices or workers, or OptimizeParam.accumulate), the position
    is re-mapped to the same fraction of the epoch, rounded down to a whole update (a few images
    repeat rather than being skipped): keeping the old count would run past the end of the new
    schedule, at lr 0. Without a checkpoint: (begin_epoch * updates per epoch, 0).
    """
    updates_per_epoch = int(math.ceil(batches_per_epoch / float(accumulate)))
    if manifest is None:
        return begin_epoch * updates_per_epoch, 0
    epoch, batch = manifest["epoch"], manifest["extra"].get("batch_in_epoch", 0)
    old = manifest["extra"].get("iters_per_epoch")
    old_accumulate = manifest["extra"].get("accumulate", 1)
    if old is None or (old, old_accumulate) == (batches_per_epoch, accumulate):   # older checkpoints lack it
        return manifest["iteration"], batch
    updates = int(math.floor(batch * batches_per_epoch / float(old) / accumulate))
    skip = min(updates * accumulate, batches_per_epoch)
    iteration = epoch * updates_per_epoch + updates
    logger.warning("--resume: the checkpoint ran %d batches per epoch with %d per update, this run %d with %d "
                   "(batch, devices or accumulation changed): position re-mapped from iteration %d (batch %d of "
                   "epoch %d) to iteration %d (batch %d)", old, old_accumulate, batches_per_epoch, accumulate,
                   manifest["iteration"], batch, epoch, iteration, skip)
    return iteration, skip


def describe(manifest):
    """"ckpt-0001-0000004.json (epoch 1, iteration 4)" or "none"."""
    if manifest is None:
        return "none"
    return "%s (epoch %d, iteration %d)" % (
        os.path.join(manifest["dir"], "ckpt-%04d-%07d.json" % (manifest["epoch"], manifest["iteration"])),
        manifest["epoch"], manifest["iteration"])


def guarded(what, exp_dir, fn, *args, **kwargs):
    """fn(*args, **kwargs); an OSError (a full disk, a file-size limit, ...) becomes a UserError
    saying `what` failed and naming the newest complete checkpoint, which such a failure leaves
    intact."""
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        disk = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)
        raise UserError("%s failed: %s%s; the last good checkpoint %s is intact: %s, then continue with --resume"
                        % (what, e, " (disk full or a file-size limit?)" if disk else "",
                           describe(latest_checkpoint(exp_dir)), "free space" if disk else "fix that"))


class StopOnInterrupt:
    """The first Ctrl-C (SIGINT) only sets `requested`, so the training loop can finish its step and
    save the position (stop_interrupted); a second one stops at once, naming the newest complete
    checkpoint, with exit code 130.

    Deferring matters: an interrupt inside Module.update could leave half the weights updated.
    """

    def __init__(self, exp_dir):
        self.exp_dir, self.requested, self._previous = exp_dir, False, None

    def _handle(self, signum, frame):
        if self.requested:
            print("interrupted; resume with --resume (position not saved; last checkpoint: %s)"
                  % describe(latest_checkpoint(self.exp_dir)), file=sys.stderr, flush=True)
            raise SystemExit(130)
        self.requested = True
        print("stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def install(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def restore(self):
        signal.signal(signal.SIGINT, self._previous)


def stop_interrupted(exp_dir, save=None):
    """After a deferred Ctrl-C: save the current position with `save()` (None: this rank does not
    save), print how to resume, return 130 (the exit code for SIGINT)."""
    if save is not None:
        save()
    print("interrupted; resume with --resume (last checkpoint: %s)" % describe(latest_checkpoint(exp_dir)),
          file=sys.stderr, flush=True)
    return 130
