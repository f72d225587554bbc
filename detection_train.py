#!/usr/bin/env python
"""Train a detector from a config.

  python detection_train.py --config config/quickstart.py [--set Class.field=value ...] [--resume]

Checkpoints go to experiments/<General.name>/ after every epoch (and every
General.checkpoint_iters iterations); --resume continues from the newest complete one. With
TestParam.eval_every > 0 the weights are evaluated on DatasetParam.val_roidb during training
(core/validation_hook.py): val_metrics.csv, val_curve.png, <name>-best.params and early stopping
(OptimizeParam.early_stop_patience).

Several machines: scripts/launch.py starts this script as dist_sync workers (docs/distributed.md).
Each worker trains (and validates) on its shard of the data; rank 0 alone writes checkpoints,
metrics.csv, loss_curve.png, the validation outputs, TensorBoard events and train.log.
"""
import argparse
import logging
import os
import sys
import traceback

from utils.cpu import configure_cpu, cpu_devices_of

configure_cpu(devices=cpu_devices_of(sys.argv[1:]))  # before mxnet is imported

import mxnet as mx
import numpy as np

from core.anchor_fit import log_data_summary
from core.dataset import load_config_roidb
from core.devices import contexts
from core.roidb import check_class_names
from core.hooks import (Checkpointer, EMAUpdate, InterruptHook, MetricsLogger, NonFiniteCheck, RunState, TensorBoard,
                        train_loop)
from core.loader import DetectionLoader
from core.optimizer import attach_optimizer, build_optimizer, initializer, restore_optimizer_states
from core.pipeline import build_transform
from core.train_step import TrainStep
from core.targets import make_target_fn
from core.validation import Validator
from core.validation_hook import Validation
from models.efficientdet.builder import get_train_symbol, train_data_shapes
from models.efficientdet.stats import param_shapes
from utils.checkpoint import latest_checkpoint, load_checkpoint
from utils.config import add_config_args, load_config
from utils.ema import ExponentialMovingAverage
from utils.errors import UserError, refuse_overwrite, run_cli
from utils.logger import setup_logger
from utils.pretrain import fixed_param_names, load_pretrained
from utils.resume import describe, guarded, resume_position

logger = logging.getLogger("train")
dist_kvstore = None   # held by the module, not by main(): see run_worker


def create_kvstore(cfg):
    """(kvstore for Module.init_optimizer, rank, number of workers).

    A process started as a worker by scripts/launch.py (DMLC_ROLE=worker) uses dist_sync, or
    dist_device_sync with GPUs, unless the config names one of them already. The dist kvstore is
    created once, here; creating it joins the job (ps-lite waits for every node). Parameters are
    updated on the workers and the servers only sum gradients (core.optimizer.attach_optimizer):
    so every worker holds the optimizer state, which rank 0 checkpoints, and the logged lr is the
    one applied.
    """
    name = cfg.KvstoreParam.kvstore
    if os.environ.get("DMLC_ROLE") != "worker":
        if name.startswith("dist"):
            raise UserError("KvstoreParam.kvstore=%s needs a scheduler and servers: start training with "
                            "scripts/launch.py (docs/distributed.md)" % name)
        return name, 0, 1
    if not name.startswith("dist"):
        name = "dist_device_sync" if cfg.KvstoreParam.gpus else "dist_sync"
    if name not in ("dist_sync", "dist_device_sync"):
        raise UserError("KvstoreParam.kvstore=%s: only dist_sync and dist_device_sync are supported" % name)
    if cfg.General.fp16 and not cfg.OptimizeParam.loss_scale:
        raise UserError("dynamic loss scaling skips overflowing steps on one worker only, which stalls "
                        "dist_sync; set a static OptimizeParam.loss_scale (e.g. 1024) for distributed fp16")
    global dist_kvstore
    dist_kvstore = kv = mx.kv.create(name)
    return kv, kv.rank, kv.num_workers


def check_same_start(kv, iteration):
    """Fail unless every worker starts at the same iteration: otherwise the ranks run different
    numbers of steps and block each other forever. The usual cause is --resume on hosts that do not
    share experiments/. The servers sum the pushed values, so at least one rank sees a mismatch;
    its exit makes the launcher stop the others."""
    total = mx.nd.zeros((1,), dtype=np.float64)
    kv.init("start_iteration", total)
    kv.push("start_iteration", mx.nd.array([iteration], dtype=np.float64))
    kv.pull("start_iteration", out=total)
    if total.asscalar() != iteration * kv.num_workers:
        raise UserError("worker rank %d starts at iteration %d but the workers disagree (sum %d over %d "
                        "workers): --resume needs experiments/ on a shared filesystem or copied to every "
                        "host" % (kv.rank, iteration, total.asscalar(), kv.num_workers))


def setup_logging(exp_dir, rank):
    """Rank 0 logs to <exp_dir>/train.log and the console; the other ranks to the console only (one
    writer per file), tagged with their rank so the launcher's merged output stays readable."""
    if rank == 0:
        setup_logger(os.path.join(exp_dir, "train.log"))
    else:
        logging.basicConfig(level=logging.INFO, force=True,
                            format="%%(asctime)s rank %d %%(levelname)s %%(name)s: %%(message)s" % rank)


def initial_params(cfg, sym, input_shapes, manifest):
    """(arg, aux, optimizer_states, ema_state) from a checkpoint to resume, pretrained weights, or nothing."""
    if manifest is not None:
        arg, aux, states, ema, _ = load_checkpoint(manifest)
        logger.info("resuming from epoch %d, iteration %d (%s)", manifest["epoch"], manifest["iteration"],
                    manifest["dir"])
        return arg, aux, states, ema
    p = cfg.ModelParam.pretrain
    if not p.prefix:
        return {}, {}, None, None
    path, own = "%s-%04d.params" % (p.prefix, p.epoch), os.path.join("experiments", cfg.General.name, cfg.General.name)
    sched = cfg.OptimizeParam.schedule
    refuse_overwrite([("this run's epoch file", "%s-%04d.params" % (own, e))
                      for e in range(sched.begin_epoch + 1, sched.end_epoch + 1)], [("ModelParam.pretrain", path)])
    shapes = dict(input_shapes)
    arg_shapes, aux_shapes = param_shapes(sym, shapes.pop("data"), **shapes)
    arg, aux = load_pretrained(path, arg_shapes, aux_shapes, p.exclude)
    return arg, aux, None, None


def open_run(args, cfg, exp_dir):
    """The checkpoint manifest to resume from (None: a fresh run); refuses to start over in a folder
    that holds a run, since that would mix two runs' checkpoints and metrics."""
    manifest = latest_checkpoint(exp_dir)
    if manifest is not None and not args.resume:
        raise UserError("%s already holds a training run (checkpoint at epoch %d, iteration %d): pass --resume "
                        "to continue it, or choose another General.name" % (exp_dir, manifest["epoch"],
                                                                             manifest["iteration"]))
    if args.resume and manifest is None:
        logger.info("--resume: no complete checkpoint in %s, starting fresh", exp_dir)
    return manifest


def build_module(cfg, loader, ctx, manifest):
    """(Module bound for training on devices `ctx` with its initial weights, optimizer states to
    restore or None, EMA state or None, names of the trainable parameters). With
    OptimizeParam.accumulate > 1 gradients add up over backward passes (grad_req "add"; TrainStep
    zeroes them after each update)."""
    sym = get_train_symbol(cfg, len(ctx))
    data_shapes = train_data_shapes(cfg, loader.batch_size)
    data_names = [n for n, _ in data_shapes]
    label_names = [d.name for d in loader.provide_label]
    arg_names = [n for n in sym.list_arguments() if n not in data_names + label_names]
    fixed = fixed_param_names(arg_names, cfg.ModelParam.pretrain.fixed_param)
    logger.info("%d of %d parameters frozen", len(fixed), len(arg_names))
    mod = mx.mod.Module(sym, data_names=data_names, label_names=label_names, context=ctx, fixed_param_names=fixed)
    mod.bind(data_shapes, loader.provide_label, for_training=True,
             grad_req="add" if cfg.OptimizeParam.accumulate > 1 else "write")
    # The graph is built for General.batch_image images (one device's slice of the batch).
    one_device = train_data_shapes(cfg, cfg.General.batch_image) + \
        [(d.name, (cfg.General.batch_image,) + tuple(d.shape[1:])) for d in loader.provide_label]
    arg, aux, states, ema_state = initial_params(cfg, sym, dict(one_device), manifest)
    mod.init_params(initializer(), arg_params=arg, aux_params=aux, allow_missing=True)
    return mod, states, ema_state, [n for n in arg_names if n not in fixed]


def init_optimizer(cfg, mod, kvstore, num_images, updates_per_epoch, num_update, num_workers):
    """Module.init_optimizer with the configured optimizer, its schedule at update `num_update`."""
    # An update sees batch_image x devices x accumulate images per worker. The lr follows that
    # batch (linear scaling), times the workers with scale_lr_by_workers: one machine with the
    # same total batch then takes the same steps.
    batch = cfg.General.batch_image * len(mod._context) * cfg.OptimizeParam.accumulate
    lr_batch = batch * num_workers if cfg.KvstoreParam.scale_lr_by_workers else batch
    opt = build_optimizer(cfg, mod._param_names, num_images, lr_batch, updates_per_epoch, num_update)
    attach_optimizer(mod, opt, kvstore)


def val_roidb(cfg, train_categories):
    """(roidb, categories) of DatasetParam.val_roidb when TestParam.eval_every > 0, else None; checked
    at the start, so a missing or empty validation set never fails mid-run."""
    if not cfg.TestParam.eval_every:
        return None
    if not cfg.DatasetParam.val_roidb:
        raise UserError("TestParam.eval_every=%d evaluates on DatasetParam.val_roidb, which is not set: set it (a "
                        "roidb cache from scripts/create_roidb.py) or TestParam.eval_every=0" % cfg.TestParam.eval_every)
    roidb, categories = load_config_roidb(cfg, "val")
    names, train_names = [c["name"] for c in categories], [c["name"] for c in train_categories]
    if names != train_names:
        raise UserError("DatasetParam.val_roidb %s has the classes %s but the training roidb %s has %s: the class "
                        "indices would not match" % (cfg.DatasetParam.val_roidb, names, cfg.DatasetParam.train_roidb,
                                                     train_names))
    return roidb, categories


def make_hooks(cfg, manifest, class_names, validator=None):
    """The hooks of a training run, in the order they run (see core.hooks)."""
    # TensorBoard first: it opens the writer the others log to. Validation before the checkpointer,
    # whose epoch-end checkpoint then holds the evaluation's result (the best so far). The
    # checkpointer saves an interrupted position before the interrupt hook reports it.
    validation = [Validation(validator, class_names, manifest["iteration"] if manifest else None)] if validator else []
    return [TensorBoard(), NonFiniteCheck(), EMAUpdate(),
            MetricsLogger(keep_until=manifest["iteration"] if manifest else 0)] + validation + \
        [Checkpointer(class_names), InterruptHook()]


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    args = parser.parse_args()
    cfg = load_config(args.config, args.sets, is_train=True)
    g, o = cfg.General, cfg.OptimizeParam
    kvstore, rank, num_workers = create_kvstore(cfg)
    exp_dir = os.path.join("experiments", g.name)
    os.makedirs(exp_dir, exist_ok=True)
    setup_logging(exp_dir, rank)
    mx.random.seed(g.seed)
    np.random.seed(g.seed)

    # data
    roidb, categories = load_config_roidb(cfg, "train")
    log_data_summary(cfg, roidb, categories)
    val = val_roidb(cfg, categories)
    manifest = open_run(args, cfg, exp_dir)
    begin_epoch = manifest["epoch"] if manifest else o.schedule.begin_epoch
    ctx = contexts(cfg)
    batch = g.batch_image * len(ctx)
    loader = DetectionLoader(roidb, build_transform(cfg, True, roidb), make_target_fn(cfg), batch, shuffle=True,
                             seed=g.seed, num_workers=cfg.DatasetParam.num_workers,
                             prefetch=cfg.DatasetParam.prefetch, begin_epoch=begin_epoch,
                             rank=rank, num_ranks=num_workers)
    num_update, skip = resume_position(manifest, loader.num_batches, begin_epoch, o.accumulate)
    updates_per_epoch = -(-loader.num_batches // o.accumulate)
    loader.seek(skip)

    # model and optimizer
    mod, states, ema_state, trainable = build_module(cfg, loader, ctx, manifest)
    if isinstance(kvstore, mx.kv.KVStore):
        check_same_start(kvstore, num_update)
    init_optimizer(cfg, mod, kvstore, len(roidb), updates_per_epoch, num_update, num_workers)
    if states:
        guarded("restoring the optimizer state of %s" % describe(manifest), exp_dir, restore_optimizer_states,
                mod, states, exp_dir, manifest["extra"].get("devices"))
    ema = ExponentialMovingAverage(o.ema_decay) if o.ema_decay > 0 else None
    if ema and ema_state:
        ema.load(ema_state)
    loss_scale = (manifest["extra"]["loss_scale"] if manifest else (o.loss_scale or 2.0 ** 16)) if g.fp16 else None
    step = TrainStep(mod, o.clip_gradient, loss_scale, dynamic=g.fp16 and not o.loss_scale)
    logger.info("training %s: %d images, batch %d (%d device(s)) x %d accumulated x %d worker(s) (rank %d), "
                "%d iterations/epoch, epochs %d..%d, %d trainable params", g.name, len(roidb), batch, len(ctx),
                o.accumulate, num_workers, rank, updates_per_epoch, begin_epoch, o.schedule.end_epoch,
                len(trainable))

    # Built on every rank at the same point: under dist_sync its kvstore keys are created here.
    validator = Validator(cfg, *val, ctx, kvstore if isinstance(kvstore, mx.kv.KVStore) else None) if val else None
    run = RunState(cfg, mod, step, loader, exp_dir, rank, num_workers, ema, epoch=begin_epoch,
                   num_update=num_update, batch_in_epoch=skip, images_per_step=batch * o.accumulate * num_workers,
                   accumulate=o.accumulate, hook_state=manifest["extra"].get("hooks") if manifest else None)
    return train_loop(run, make_hooks(cfg, manifest, [c["name"] for c in categories], validator))


def run_worker(main):
    """run_cli(main) for a dist worker.

    Destroying a dist kvstore waits in ps-lite's shutdown barrier for every worker. A worker that
    fails must not get there (the others wait for its gradients: nobody would ever end), so the
    kvstore is held by this module rather than by main()'s frame, which an exception's traceback
    frees at an unpredictable point, and a failed worker leaves through os._exit; the launcher
    sees its exit code and stops the rest. On success the last reference is dropped here, and the
    barrier lets the workers finish together.
    """
    global dist_kvstore
    try:
        run_cli(main)
    except SystemExit as e:
        if not e.code:
            dist_kvstore = None
            raise
        code = e.code                   # run_cli exits with ints only
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    (run_worker if os.environ.get("DMLC_ROLE") == "worker" else run_cli)(main)
