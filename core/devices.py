"""The devices one process computes on."""
import mxnet as mx


def contexts(cfg):
    """Devices from KvstoreParam.gpus; the CPU when none are listed."""
    return [mx.gpu(i) for i in cfg.KvstoreParam.gpus] or [mx.cpu()]
