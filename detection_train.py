#!/usr/bin/env python
"""Train a detector from a config.

  python detection_train.py --config config/quickstart.py [--set Class.field=value ...] [--resume]

Checkpoints go to experiments/<General.name>/ after every epoch (and every
General.checkpoint_iters iterations); --resume continues from the newest complete one.

Several machines: scripts/launch.py starts this script as dist_sync workers (docs/distributed.md).
Each worker trains on its shard of the data; rank 0 alone writes checkpoints, metrics.csv,
loss_curve.png and train.log.
"""
import argparse
import logging
import math
import os
import sys
import time
import traceback

from utils.threads import configure_threads

configure_threads()  # before mxnet is imported

import mxnet as mx
import numpy as np
from tqdm import tqdm

from core.anchor_fit import log_data_summary
from core.dataset import load_config_roidb
from core.loader import DetectionLoader
from core.module import (TrainStep, build_optimizer, contexts, initializer, optimizer_states,
                         restore_optimizer_states)
from core.targets import make_target_fn
from core.transforms import build_transform
from models.efficientdet.builder import get_train_symbol
from models.efficientdet.stats import param_shapes
from utils.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from utils.config import add_config_args, load_config
from utils.ema import ExponentialMovingAverage
from utils.errors import UserError, refuse_overwrite, run_cli
from utils.logger import MetricsWriter, plot_loss_curve, setup_logger
from utils.pretrain import fixed_param_names, load_pretrained
from utils.resume import StopOnInterrupt, describe, guarded, resume_position, stop_interrupted

logger = logging.getLogger("train")
dist_kvstore = None   # held by the module, not by main(): see run_worker


def create_kvstore(cfg):
    """(kvstore for Module.init_optimizer, rank, number of workers).

    A process started as a worker by scripts/launch.py (DMLC_ROLE=worker) uses dist_sync, or
    dist_device_sync with GPUs, unless the config names one of them already. The dist kvstore is
    created once, here; creating it joins the job (ps-lite waits for every node). Parameters are
    updated on the workers and the servers only sum gradients (MXNET_UPDATE_ON_KVSTORE=0): so
    every worker holds the optimizer state, which rank 0 checkpoints (a server-side optimizer
    cannot be saved from a worker), and the logged lr is the one applied.
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
    os.environ["MXNET_UPDATE_ON_KVSTORE"] = "0"   # read by Module.init_optimizer
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


def save(mod, ema, exp_dir, cfg, epoch, iteration, batch_in_epoch, step, epoch_end, run):
    """Checkpoint the position; `run` holds "class_names" and "iters_per_epoch" to record with it. A
    failed write (full disk) is one line naming the last good checkpoint."""
    def write():
        arg, aux = mod.get_params()
        save_checkpoint(exp_dir, epoch, iteration, arg, aux, optimizer_states(mod, exp_dir),
                        ema.state_dict() if ema else None,
                        extra={"batch_in_epoch": batch_in_epoch, "loss_scale": step.loss_scale,
                               "iters_per_epoch": run["iters_per_epoch"]},
                        epoch_prefix=os.path.join(exp_dir, cfg.General.name) if epoch_end else None,
                        keep_last=cfg.General.keep_last, class_names=run["class_names"])
    guarded("saving the checkpoint of epoch %d iteration %d" % (epoch, iteration), exp_dir, write)


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
    manifest = latest_checkpoint(exp_dir)
    if manifest is not None and not args.resume:
        # Starting over would mix two runs' checkpoints and metrics in one folder.
        raise UserError("%s already holds a training run (checkpoint at epoch %d, iteration %d): pass --resume "
                        "to continue it, or choose another General.name" % (exp_dir, manifest["epoch"],
                                                                             manifest["iteration"]))
    if args.resume and manifest is None:
        logger.info("--resume: no complete checkpoint in %s, starting fresh", exp_dir)
    begin_epoch = manifest["epoch"] if manifest else o.schedule.begin_epoch
    ctx = contexts(cfg)
    batch = g.batch_image * len(ctx)
    loader = DetectionLoader(roidb, build_transform(cfg, True, roidb), make_target_fn(cfg), batch, shuffle=True,
                             seed=g.seed, num_workers=cfg.DatasetParam.num_workers,
                             prefetch=cfg.DatasetParam.prefetch, begin_epoch=begin_epoch,
                             rank=rank, num_ranks=num_workers)
    num_update, skip = resume_position(manifest, loader.num_batches, begin_epoch)
    loader.seek(skip)

    # model
    sym = get_train_symbol(cfg)
    data_names = ["data"] + (["loss_scale"] if g.fp16 else [])
    data_shapes = loader.provide_data + ([("loss_scale", (batch,))] if g.fp16 else [])
    label_names = [d.name for d in loader.provide_label]
    arg_names = [n for n in sym.list_arguments() if n not in data_names + label_names]
    fixed = fixed_param_names(arg_names, cfg.ModelParam.pretrain.fixed_param)
    logger.info("%d of %d parameters frozen", len(fixed), len(arg_names))
    mod = mx.mod.Module(sym, data_names=data_names, label_names=label_names,
                        context=ctx, fixed_param_names=fixed)
    mod.bind(data_shapes, loader.provide_label, for_training=True)
    arg, aux, states, ema_state = initial_params(cfg, sym, dict(data_shapes + loader.provide_label), manifest)
    mod.init_params(initializer(), arg_params=arg, aux_params=aux, allow_missing=True)
    iters_per_epoch = loader.num_batches
    run = {"class_names": [c["name"] for c in categories], "iters_per_epoch": iters_per_epoch}
    trainable = [n for n in arg_names if n not in fixed]
    if isinstance(kvstore, mx.kv.KVStore):
        check_same_start(kvstore, num_update)
    # A step of dist_sync sees batch x workers images; with scale_lr_by_workers the lr follows that
    # global batch (linear scaling), as on one machine with the same total batch.
    batch_total = batch * num_workers
    opt = build_optimizer(cfg, arg_names, len(roidb), batch_total if cfg.KvstoreParam.scale_lr_by_workers
                          else batch, iters_per_epoch, num_update)
    # Each replica (device of a worker) normalises its loss by its own positives + 1, and the
    # kvstore SUMS the replicas' gradients (devices, then workers on the servers): 1/replicas makes
    # the step the mean over replicas, as automl averages per-replica losses across TPU cores.
    opt.rescale_grad = 1.0 / (num_workers * len(ctx))
    mod.init_optimizer(kvstore=kvstore, optimizer=opt)
    if states:
        guarded("restoring the optimizer state of %s" % describe(manifest), exp_dir, restore_optimizer_states,
                mod, states, exp_dir)
    ema = ExponentialMovingAverage(o.ema_decay) if o.ema_decay > 0 else None
    if ema and ema_state:
        ema.load(ema_state)
    loss_scale = (manifest["extra"]["loss_scale"] if manifest else (o.loss_scale or 2.0 ** 16)) if g.fp16 else None
    # Under dist_sync the global-norm clipping of TrainStep acts on each worker's gradient before the
    # push: the applied mean gradient still has norm <= clip_gradient, but it equals clipping the
    # global gradient only when no worker clips.
    step = TrainStep(mod, o.clip_gradient, loss_scale, dynamic=g.fp16 and not o.loss_scale)
    logger.info("training %s: %d images, batch %d x %d worker(s) (rank %d), %d iterations/epoch, epochs %d..%d, "
                "%d trainable params", g.name, len(roidb), batch, num_workers, rank, iters_per_epoch,
                begin_epoch, o.schedule.end_epoch, len(trainable))

    # loop
    # Rows past the checkpoint are iterations the resumed run repeats.
    metrics = MetricsWriter(os.path.join(exp_dir, "metrics.csv"),
                            keep_until=manifest["iteration"] if manifest else 0) if rank == 0 else None
    names = [n.replace("_output", "") for n in mod.output_names]
    stop = StopOnInterrupt(exp_dir).install()
    for epoch in range(begin_epoch, o.schedule.end_epoch):
        bar = tqdm(total=iters_per_epoch, initial=skip, desc="epoch %d" % epoch, dynamic_ncols=True,
                   disable=None)
        window, tick = [], time.time()
        for k, data in enumerate(loader, start=skip):
            losses = step(data)
            num_update += losses is not None
            if losses is not None and not all(math.isfinite(v) for v in losses):
                last = latest_checkpoint(exp_dir)
                raise UserError("loss is not finite (%s) at epoch %d iteration %d; stopped. Last good "
                                "checkpoint: %s" % (", ".join("%s=%s" % kv for kv in zip(names, losses)),
                                                    epoch, num_update,
                                                    "epoch %d iteration %d" % (last["epoch"], last["iteration"])
                                                    if last else "none"))
            if ema and losses is not None:
                ema.update(*mod.get_params())
            if losses is not None:
                window.append(losses)
            bar.update(1)
            if (k + 1) % g.log_frequency == 0 or k + 1 == iters_per_epoch:
                speed = len(window) * batch_total / max(time.time() - tick, 1e-9)
                mean = np.mean(window, axis=0) if window else [float("nan")] * len(names)
                terms = dict(zip(names, (float(v) for v in mean)))
                bar.set_postfix(dict(terms, img_s="%.2f" % speed))
                if metrics is not None:   # rank 0's losses; speed counts all workers' images
                    metrics.write(epoch, num_update, opt.learning_rate, terms, speed)
                window, tick = [], time.time()
            if rank == 0 and g.checkpoint_iters and num_update % g.checkpoint_iters == 0 and k + 1 < iters_per_epoch:
                save(mod, ema, exp_dir, cfg, epoch, num_update, k + 1, step, False, run)
            if stop.requested:
                loader.close()
                if metrics is not None:
                    metrics.close()
                return stop_interrupted(exp_dir, (lambda: save(mod, ema, exp_dir, cfg, epoch, num_update, k + 1,
                                                               step, False, run)) if rank == 0 else None)
        bar.close()
        loader.reset()
        skip = 0
        if rank == 0:
            save(mod, ema, exp_dir, cfg, epoch + 1, num_update, 0, step, True, run)
        logger.info("epoch %d done (%d iterations, %d unreadable images skipped so far)", epoch, num_update,
                    loader.skipped)
    stop.restore()
    loader.close()
    if metrics is not None:
        metrics.close()
        plot_loss_curve(os.path.join(exp_dir, "metrics.csv"), os.path.join(exp_dir, "loss_curve.png"))
    logger.info("finished: %s", exp_dir)
    return 0


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
