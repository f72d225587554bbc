"""DetectionLoader: roidb -> transform -> targets -> mx.io.DataBatch, with workers and sharding.

Epoch plan (identical on every rank, so ranks agree without talking):
- order = RandomState([seed, epoch]).permutation(N) if shuffle else 0..N-1, wrapped to a multiple
  of num_ranks; rank r takes every num_ranks-th entry from r, so ranks are disjoint except for the
  wrapped tail and together cover the epoch. Every rank gets the same number of batches, which
  dist_sync needs.
- a rank's last partial batch is filled by wrapping around its shard; `DataBatch.pad` counts the
  wrapped (and rank-wrapped) samples at the end of the batch, as MXNet's own iterators do.

Determinism: sample j of the plan is augmented with RandomState([seed, epoch, j, attempt]), so the
batches do not depend on the number of workers or on which worker runs a sample.

Unreadable images (core.image_io.ImageReadError: missing, corrupt, truncated, or not the size
the roidb says) are replaced by the next readable record of the roidb. Each is warned about once,
by name and with its substitute, and counted once in `skipped` (files, not occurrences); batch
size never changes.
"""
import itertools
import logging
import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np

from core.image_io import ImageReadError
from utils.errors import UserError

logger = logging.getLogger(__name__)

# loader id -> (roidb, transform, target_fn, set of unreadable indices).
_STATE = {}
_NEXT_ID = itertools.count()
_BAD_LOCK = threading.Lock()   # two workers may fail on the same image at once: report it once
MAX_SUBSTITUTES = 64       # consecutive unreadable images before the loader gives up


def _load_sample(loader_id, seed, epoch, slot, index):
    """Transform (and target) roidb[index]; substitutes later records for unreadable ones.

    Returns (sample dict with an added "targets" dict or None, [messages of newly found unreadable
    images, each naming its substitute]).
    """
    roidb, transform, target_fn, bad = _STATE[loader_id]
    found = []
    for attempt in range(min(len(roidb), MAX_SUBSTITUTES)):
        i = (index + attempt) % len(roidb)
        if i in bad:
            continue                       # already reported
        rng = np.random.RandomState([seed, epoch, slot, attempt])
        try:
            sample = transform(roidb[i], rng)
        except ImageReadError as e:
            with _BAD_LOCK:
                if i not in bad:
                    bad.add(i)
                    found.append(str(e))
            continue
        sample["targets"] = target_fn(sample["boxes"], sample["classes"]) if target_fn else None
        return sample, ["%s; its batch slot takes the next readable image, %s, instead" % (m, roidb[i]["image"])
                        for m in found]
    raise UserError("%d consecutive images from %s could not be read; is the image folder right?"
                    % (min(len(roidb), MAX_SUBSTITUTES), roidb[index]["image"]))


class DetectionLoader(mx.io.DataIter):
    """An mx.io.DataIter over a roidb.

    transform: `(record, rng) -> {"data": float32 (3, H, W), "boxes", "classes", "scale",
        "image_id", "orig_size": (h, w)}` (core.pipeline.build_transform).
    target_fn: `(boxes float32 (G, 4) x1y1x2y2, classes int32 (G,)) -> {name: fixed-shape array}`,
        or None for evaluation (no labels).
    rank / num_ranks: the kvstore's rank and num_workers, for sharding.
    num_workers: worker threads (0 = load in the calling thread). Threads, not processes: cv2
        and numpy release the GIL, and a forked Pool was slower (it pickles every sample back)
        and could stall after MXNet and OpenCV had started threads.
    prefetch: batches submitted ahead of the one being returned.

    provide_data = [("data", (B, 3, H, W))]; provide_label = each target key in sorted order,
    shaped (B,) + the target's shape. Each DataBatch also carries
    `image_ids` int64 (B,) and `im_info` float32 (B, 3) = (original h, original w, scale), where
    input coordinates = original coordinates * scale.
    """

    def __init__(self, roidb, transform, target_fn=None, batch_size=1, shuffle=False, seed=0,
                 num_workers=0, prefetch=2, rank=0, num_ranks=1, begin_epoch=0):
        super().__init__(batch_size)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UserError("the batch size must be an integer >= 1, got %r" % (batch_size,))
        if not roidb:
            raise UserError("the roidb is empty: no images to load")
        if not 0 <= rank < num_ranks:
            raise UserError("rank %d is outside 0..%d" % (rank, num_ranks - 1))
        self.roidb, self.seed, self.shuffle = roidb, int(seed), shuffle
        self.rank, self.num_ranks, self.prefetch = rank, num_ranks, max(0, prefetch)
        self._pool = None
        self._bad = set()                  # roidb indices of unreadable images, shared with the workers
        self._id = next(_NEXT_ID)
        _STATE[self._id] = (roidb, transform, target_fn, self._bad)
        self._labeled = target_fn is not None
        probe, found = _load_sample(self._id, self.seed, 0, 0, 0)   # shapes; fails early on bugs
        self._report(found)
        B = batch_size
        self._provide_data = [mx.io.DataDesc("data", (B,) + probe["data"].shape, np.float32)]
        targets = probe["targets"] or {}
        self._label_names = sorted(targets)
        self._provide_label = [mx.io.DataDesc(k, (B,) + targets[k].shape, targets[k].dtype)
                               for k in self._label_names]
        self._pool = ThreadPoolExecutor(num_workers, "loader") if num_workers > 0 else None
        self._epoch = begin_epoch
        self._start_epoch()

    @property
    def provide_data(self):
        return self._provide_data

    @property
    def provide_label(self):
        return self._provide_label

    @property
    def skipped(self):
        """Unreadable image files found so far (each counted once, however often it comes up)."""
        return len(self._bad)

    @property
    def epoch(self):
        return self._epoch

    @property
    def num_batches(self):
        return len(self._plan)

    def epoch_plan(self, epoch):
        """[(roidb indices (B,), plan slots (B,), pad)] of this rank for `epoch`."""
        n, B, R = len(self.roidb), self.batch_size, self.num_ranks
        order = np.random.RandomState([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        per_rank = int(math.ceil(n / float(R)))
        slots = np.arange(per_rank * R)[self.rank::R]
        num_batches = int(math.ceil(per_rank / float(B)))
        pick = np.arange(num_batches * B) % per_rank       # wrap the last batch around the shard
        slots = slots[pick]
        real = (slots < n) & (np.arange(len(slots)) < per_rank)
        return [(order[slots[k:k + B] % n], slots[k:k + B], int((~real[k:k + B]).sum()))
                for k in range(0, len(slots), B)]

    def _start_epoch(self):
        self._plan = self.epoch_plan(self._epoch)
        self._cursor = 0
        self._submitted = 0
        self._pending = deque()

    def reset(self):
        """Start the next epoch (a reset before any batch was drawn keeps the current one)."""
        if self._cursor == 0 and self._submitted == 0:
            return
        for jobs in self._pending:
            for job in jobs:
                if not isinstance(job, tuple):
                    job.cancel()
        self._epoch += 1
        self._start_epoch()

    def seek(self, batch_index):
        """Start the current epoch at batch `batch_index` (resuming mid-epoch); call before iterating."""
        if self._submitted:
            raise RuntimeError("seek() must come before the epoch's first batch")
        self._cursor = self._submitted = min(int(batch_index), len(self._plan))

    def _submit(self, k):
        indices, slots, _ = self._plan[k]
        args = [(self._id, self.seed, self._epoch, int(s), int(i)) for i, s in zip(indices, slots)]
        if self._pool is None:
            return [_load_sample(*a) for a in args]
        return [self._pool.submit(_load_sample, *a) for a in args]

    def _report(self, found):
        for msg in found:
            logger.warning("unreadable image skipped (%d so far): %s", self.skipped, msg)

    @staticmethod
    def _result(job):
        return job if isinstance(job, tuple) else job.result()

    def next(self):
        if self._cursor >= len(self._plan):
            raise StopIteration
        while self._submitted < len(self._plan) and self._submitted <= self._cursor + self.prefetch:
            self._pending.append(self._submit(self._submitted))
            self._submitted += 1
        results = [self._result(j) for j in self._pending.popleft()]
        pad = self._plan[self._cursor][2]
        self._cursor += 1
        for _, found in results:
            self._report(found)
        samples = [r[0] for r in results]
        data = [mx.nd.array(np.stack([s["data"] for s in samples]), dtype=np.float32)]
        label = None
        if self._labeled:
            label = [mx.nd.array(np.stack([s["targets"][k] for s in samples]), dtype=d.dtype)
                     for k, d in zip(self._label_names, self._provide_label)]
        batch = mx.io.DataBatch(data=data, label=label, pad=pad, provide_data=self._provide_data,
                                provide_label=self._provide_label)
        batch.image_ids = np.array([s["image_id"] for s in samples], np.int64)
        batch.im_info = np.array([s["orig_size"] + (s["scale"],) for s in samples], np.float32)
        return batch

    def close(self):
        """Stop the workers; the loader cannot be iterated afterwards."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        _STATE.pop(self._id, None)

    def __del__(self):
        # Also runs when __init__ failed part-way (a UserError from the probe): close() must then
        # not raise a second, "ignored" traceback after the one-line error.
        if getattr(self, "_id", None) in _STATE:
            self.close()
