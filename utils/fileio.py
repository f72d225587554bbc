"""Atomic file writes: a crash, a full disk or a file-size limit never leaves half a file.

Every writer of the project (checkpoints, roidb caches, results and logs, drawings, exports) goes
through `atomic_write`: the content goes to a hidden temp file beside the target (`.NAME.tmp-PID`),
is fsync'd, and replaces the target in one rename, after which the directory entry is fsync'd too.
"""
import json
import os


def _fsync_dir(path):
    # The rename itself is durable only once the directory entry is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call write(tmp_path), fsync the result, then move it over `path` in one rename. A failure
    (OSError) leaves `path` as it was and is re-raised naming `path`, not the temp file."""
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.tmp-%d" % (base, os.getpid()))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise type(e)(e.errno, "cannot write %s: %s" % (path, e.strerror or e)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def write_bytes(data):
    """A `write(tmp)` for atomic_write that stores `data` (bytes) as is."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write


def write_json(path, obj):
    """json.dump `obj` to `path` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f)
    atomic_write(path, write)
