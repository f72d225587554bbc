"""The devices one process computes on."""
import mxnet as mx

from utils.errors import UserError


def contexts(cfg):
    """Devices from KvstoreParam.gpus, or KvstoreParam.cpu_devices CPU contexts (data parallelism on
    the CPU, for testing and debugging the multi-device path); the CPU when neither is set."""
    k = cfg.KvstoreParam
    if k.gpus and k.cpu_devices:
        raise UserError("KvstoreParam.gpus=%s and KvstoreParam.cpu_devices=%d both set: use one of them "
                        "(cpu_devices=0 turns it off)" % (list(k.gpus), k.cpu_devices))
    if k.cpu_devices:
        return [mx.cpu(i) for i in range(k.cpu_devices)]
    return [mx.gpu(i) for i in k.gpus] or [mx.cpu()]
