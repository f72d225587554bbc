"""Atomic training checkpoints, resume and pruning.

A checkpoint of (epoch, iteration) in an experiment directory is a group of files:
  ckpt-EEEE-IIIIIII.params  mx.nd.save dict: `arg:`/`aux:` weights, plus `ema:<key>` for the EMA
                            state when there is one and `meta:class_names` (the class names, json
                            as uint8; `mx.model.load_checkpoint` ignores both prefixes)
  ckpt-EEEE-IIIIIII.states  optimizer state bytes (core.optimizer.optimizer_states, no pickle), if any
  ckpt-EEEE-IIIIIII.json    manifest: epoch, iteration, extra, and name/size/sha256 of each file
Every file goes to a hidden temp file in the same directory, is fsync'd, then os.replace'd into
place, and the manifest is written last: a checkpoint is complete iff its manifest parses and every
listed file has the recorded size (sha256 checked on request). Temp files (`.*.tmp-*`) and
incomplete groups are never returned. One writer per directory is assumed (rank 0).
mx.nd.save ignores write errors (a full disk or a file-size limit leaves a short file without a
word), so every .params file is read back before it is renamed into place (save_nd).
"""
import errno
import hashlib
import json
import logging
import os
import re
import time

import mxnet as mx

from utils.errors import UserError
from utils.fileio import atomic_write, write_bytes

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{4,})-(\d{7,})\.(params|states|json)$")
_AUX_HINTS = ("moving_mean", "moving_var", "running_mean", "running_var")
CLASS_NAMES_KEY = "meta:class_names"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_nd(path, data):
    """mx.nd.save(path, data), read back: OSError if the file is not complete. mx.nd.save raises
    for a large write that fails, but a short file whose loss happens at close passes silently."""
    try:
        mx.nd.save(path, data)
        complete = sorted(mx.nd.load(path)) == sorted(data)
    except mx.base.MXNetError:
        complete = False
    if not complete:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise OSError(errno.EIO, "mx.nd.save left an incomplete file (%d bytes)" % size)


def json_array(obj):
    """`obj` as json, utf-8 bytes in a uint8 NDArray: how metadata rides in an mx.nd.save file."""
    return mx.nd.array(list(json.dumps(obj).encode()), dtype="uint8")


def json_of(array):
    """The object a json_array() holds."""
    return json.loads(bytes(array.asnumpy().tolist()).decode())


def class_names_array(names):
    """The `meta:class_names` value: the names as a json_array."""
    return json_array([str(n) for n in names])


def class_names_of(data):
    """The class names stored in a `.params` dict (class_names_array), or None."""
    value = data.get(CLASS_NAMES_KEY)
    return None if value is None else json_of(value)


def _module_dict(arg_params, aux_params, class_names=None):
    out = {"arg:" + k: v for k, v in arg_params.items()}
    out.update({"aux:" + k: v for k, v in (aux_params or {}).items()})
    if class_names:
        out[CLASS_NAMES_KEY] = class_names_array(class_names)
    return out


def save_epoch_params(path, arg_params, aux_params, class_names=None):
    """Atomically write a Module-compatible `.params` file (`arg:`/`aux:` keys, and the class names
    under `meta:class_names` when given)."""
    atomic_write(path, lambda tmp: save_nd(tmp, _module_dict(arg_params, aux_params, class_names)))


def save_checkpoint(prefix_dir, epoch, iteration, arg_params, aux_params, optimizer_states=None,
                    ema_params=None, extra=None, epoch_prefix=None, keep_last=None, class_names=None):
    """Write checkpoint (epoch, iteration) into `prefix_dir`; return its manifest dict.

    `optimizer_states`: bytes from `core.optimizer.optimizer_states()` or None. `ema_params`: flat
    dict of NDArrays (`ExponentialMovingAverage.state_dict()`), stored under `ema:` keys. `extra`: any
    json-serialisable dict, returned as manifest["extra"]. If `epoch_prefix` is given (an epoch
    boundary), also write `<epoch_prefix>-%04d.params` % epoch like `mx.model.save_checkpoint`,
    holding the weights used for evaluation: the EMA ones when `ema_params` is given, else the raw
    ones. If `keep_last` is given, older checkpoints are pruned afterwards. `class_names` go into
    both .params files and the manifest.
    """
    os.makedirs(prefix_dir, exist_ok=True)
    stem = "ckpt-%04d-%07d" % (epoch, iteration)
    files = {}
    params = _module_dict(arg_params, aux_params, class_names)
    params.update({"ema:" + k: v for k, v in (ema_params or {}).items()})
    parts = [("params", stem + ".params", lambda tmp: save_nd(tmp, params))]
    if optimizer_states is not None:
        parts.append(("states", stem + ".states", write_bytes(optimizer_states)))
    for role, name, write in parts:
        path = os.path.join(prefix_dir, name)
        atomic_write(path, write)
        files[role] = {"name": name, "size": os.path.getsize(path), "sha256": _sha256(path)}
    manifest = {"format": 1, "epoch": int(epoch), "iteration": int(iteration), "time": time.time(),
                "files": files, "has_ema": bool(ema_params), "extra": extra or {},
                "class_names": list(class_names or [])}
    if epoch_prefix is not None:
        if ema_params:
            arg_params = {k[4:]: v for k, v in ema_params.items() if k.startswith("arg:")}
            aux_params = {k[4:]: v for k, v in ema_params.items() if k.startswith("aux:")}
        epoch_path = "%s-%04d.params" % (epoch_prefix, epoch)
        save_epoch_params(epoch_path, arg_params, aux_params, class_names)
        manifest["epoch_file"] = os.path.abspath(epoch_path)   # informational; never pruned
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(os.path.join(prefix_dir, stem + ".json"), write_bytes(text))
    if keep_last:
        prune_checkpoints(prefix_dir, keep_last)
    manifest["dir"] = os.path.abspath(prefix_dir)
    return manifest


def _check(folder, json_name, verify_hash):
    """Return the manifest of a complete checkpoint, or raise ValueError saying what is wrong."""
    with open(os.path.join(folder, json_name), "rb") as f:
        try:
            manifest = json.loads(f.read().decode())
        except (UnicodeDecodeError, ValueError):
            raise ValueError("manifest is not valid json")
    if not isinstance(manifest, dict) or "params" not in manifest.get("files", {}):
        raise ValueError("manifest lacks a params entry")
    for entry in manifest["files"].values():
        path = os.path.join(folder, entry["name"])
        if not os.path.isfile(path):
            raise ValueError("missing %s" % entry["name"])
        if os.path.getsize(path) != entry["size"]:
            raise ValueError("%s has %d bytes, expected %d" % (entry["name"], os.path.getsize(path), entry["size"]))
        if verify_hash and _sha256(path) != entry["sha256"]:
            raise ValueError("%s fails its sha256 check" % entry["name"])
    manifest["dir"] = os.path.abspath(folder)
    return manifest


def _groups(folder):
    """{(epoch, iteration): [file names]} for checkpoint files in `folder` (temp files excluded)."""
    out = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = _NAME.match(name)
        if m:
            out.setdefault((int(m.group(1)), int(m.group(2))), []).append(name)
    return out


def list_checkpoints(folder, verify_hash=False):
    """Manifests of all complete checkpoints in `folder`, oldest first; logs each skipped one."""
    found = []
    for key, names in sorted(_groups(folder).items()):
        json_name = "ckpt-%04d-%07d.json" % key
        if json_name not in names:
            continue   # no manifest: a save that never finished; not an error
        try:
            found.append(_check(folder, json_name, verify_hash))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("skipping corrupt checkpoint %s: %s", os.path.join(folder, json_name), e)
    return found


def latest_checkpoint(folder, verify_hash=False):
    """Manifest (with "dir" added) of the newest complete checkpoint by (epoch, iteration), or None."""
    found = list_checkpoints(folder, verify_hash)
    return found[-1] if found else None


def load_checkpoint(manifest, verify_hash=True):
    """Load a manifest from latest_checkpoint/list_checkpoints.

    Returns (arg_params, aux_params, optimizer_states bytes or None, ema_params dict or None,
    manifest). Raises UserError if the files no longer match the manifest.
    """
    folder = manifest["dir"]
    json_name = "ckpt-%04d-%07d.json" % (manifest["epoch"], manifest["iteration"])
    try:
        manifest = _check(folder, json_name, verify_hash)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError("checkpoint %s is corrupt: %s" % (os.path.join(folder, json_name), e))
    data = read_params(os.path.join(folder, manifest["files"]["params"]["name"]))
    arg = {k[4:]: v for k, v in data.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in data.items() if k.startswith("aux:")}
    ema = {k[4:]: v for k, v in data.items() if k.startswith("ema:")} or None
    states = None
    if "states" in manifest["files"]:
        with open(os.path.join(folder, manifest["files"]["states"]["name"]), "rb") as f:
            states = f.read()
    return arg, aux, states, ema, manifest


def prune_checkpoints(folder, keep_last):
    """Keep the newest `keep_last` (at least 1) complete checkpoints; delete older groups.

    Incomplete groups older than the newest complete checkpoint and stale temp files are removed
    too (with one writer, nothing older can still be in progress). Newer incomplete groups stay.
    Manifests go first, so an interrupted prune never leaves a "complete" checkpoint with missing
    files.
    """
    complete = list_checkpoints(folder)
    if not complete:
        return
    kept = {(m["epoch"], m["iteration"]) for m in complete[-max(1, int(keep_last)):]}
    newest = (complete[-1]["epoch"], complete[-1]["iteration"])
    for key, names in sorted(_groups(folder).items()):
        if key in kept or key > newest:
            continue
        for name in sorted(names, key=lambda n: not n.endswith(".json")):
            os.remove(os.path.join(folder, name))
    newest_time = os.path.getmtime(os.path.join(folder, "ckpt-%04d-%07d.json" % newest))
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".ckpt-") and ".tmp-" in name and os.path.getmtime(path) < newest_time:
            os.remove(path)


def read_params(path):
    """The {key: NDArray} dict of a `.params` file as stored; UserError naming the file when it is
    missing, not an MXNet .params file, or holds no named arrays."""
    if not os.path.isfile(path):
        raise UserError("params file not found: %s" % path)
    try:
        data = mx.nd.load(path)
    except mx.base.MXNetError as e:
        # MXNet's message starts with a C++ "Traceback" header; the end of its last line says why.
        lines = str(e).strip().splitlines() or ["unreadable"]
        raise UserError("%s is not an MXNet .params file (mx.nd.load: %s)" % (path, lines[-1].rsplit(": ", 1)[-1]))
    if not isinstance(data, dict) or not data:
        raise UserError("params file %s holds no named parameters" % path)
    return data


def load_weights(path, ema=False):
    """Load a `.params` file; return (arg_params, aux_params, class names or None).

    Keys `arg:x`/`aux:x` are split by prefix; unprefixed keys count as arg unless they look like
    BN statistics (moving_mean/var); `meta:` keys are not parameters. With ema=True, the `ema:`
    weights of a training checkpoint are returned instead (UserError if it has none). A missing
    or unreadable file is a UserError naming it.
    """
    data = read_params(path)
    names = class_names_of(data)
    if ema:
        # Only the weights: the EMA's own bookkeeping (num_updates) is not a parameter.
        data = {k[4:]: v for k, v in data.items() if k.startswith(("ema:arg:", "ema:aux:"))}
        if not data:
            raise UserError("params file %s has no EMA weights" % path)
    arg, aux = {}, {}
    for key, value in data.items():
        kind, _, name = key.partition(":")
        if not name:
            kind, name = ("aux" if any(h in key for h in _AUX_HINTS) else "arg"), key
        if kind == "arg":
            arg[name] = value
        elif kind == "aux":
            aux[name] = value
    return arg, aux, names


def load_params(path, ema=False):
    """(arg_params, aux_params) of load_weights."""
    return load_weights(path, ema)[:2]
