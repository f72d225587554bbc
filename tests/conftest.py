"""Shared test helpers.

- The repo root goes on sys.path so tests import `config`, `models`, ... without installing.
- REFERENCE_DIR is `<repo>/../shared/reference` (the PyTorch fixtures, docs/design.md §5);
  `require_reference(name)` returns a fixture's path or skips the test with the reason.
- `run_script(args, timeout, cwd)` runs a repo script the way a user would: this interpreter,
  cwd = the repo root unless given. A script that writes into its working directory (training and
  detection_test.py write ./experiments/) must run with cwd=tmp_path: tests write under tmp_path
  only. Tests import these names with `from conftest import ...`.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "reference"))

if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Under pytest-xdist the workers share the cores as CPU devices do: each gets its share of OpenMP
# threads, and the scripts it runs inherit them (configure_cpu leaves a set OMP_NUM_THREADS alone).
# With every worker on all cores, OpenMP teams spin against each other and each test takes far longer.
if os.environ.get("PYTEST_XDIST_WORKER"):
    from utils.cpu import configure_cpu
    configure_cpu(devices=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# config/quickstart.py trains on two CPU devices (KvstoreParam.cpu_devices=2) for speed; tests of
# one device's training pin one (General.batch_image is then the whole batch).
ONE_DEVICE = "KvstoreParam.cpu_devices=0"


def require_reference(name):
    """Path of reference fixture `name`; skips the calling test if the folder or file is absent."""
    if not os.path.isdir(REFERENCE_DIR):
        pytest.skip("reference fixtures folder %s is absent" % REFERENCE_DIR)
    path = os.path.join(REFERENCE_DIR, name)
    if not os.path.isfile(path):
        pytest.skip("reference fixture %s is absent" % path)
    return path


def run_script(args, timeout=300, cwd=REPO):
    """Run `python <args...>` in `cwd`; returns the CompletedProcess (text, not checked).

    args[0], the script, is taken relative to the repo root; other relative paths to `cwd`.
    PYTHONPATH carries the repo root so scripts import the packages even when the venv was not
    built by `make` (which adds the root through a .pth file).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    args = [os.path.join(REPO, str(args[0]))] + [str(a) for a in args[1:]]
    return subprocess.run([sys.executable] + args, cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def reference_dir():
    """REFERENCE_DIR, or a skip if it is absent."""
    if not os.path.isdir(REFERENCE_DIR):
        pytest.skip("reference fixtures folder %s is absent" % REFERENCE_DIR)
    return REFERENCE_DIR


def varied_roidb(folder, num_images, size=64, seed=0):
    """A roidb cache of `num_images` noise images (lossless PNG) with 1-3 boxes of random size,
    place and class (5 classes) each, so images differ in their number of positive anchors;
    returns the cache path. Used by the multi-device equivalence tests."""
    import cv2
    import numpy as np
    from core.roidb import save_roidb
    os.makedirs(folder, exist_ok=True)
    rng, roidb = np.random.RandomState(seed), []
    for i in range(num_images):
        img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        n = rng.randint(1, 4)
        wh = rng.uniform(0.15, 0.6, (n, 2)) * size
        xy = rng.uniform(0, 1, (n, 2)) * (size - wh)
        boxes = np.hstack([xy, xy + wh]).astype(np.float32)
        classes = rng.randint(0, 5, n).astype(np.int32)
        for (x1, y1, x2, y2), c in zip(boxes.astype(int), classes):
            img[y1:y2, x1:x2] = (50 * c, 255 - 40 * c, 128)
        path = os.path.join(folder, "%03d.png" % i)
        cv2.imwrite(path, img)
        roidb.append({"image": path, "width": size, "height": size, "image_id": i + 1, "boxes": boxes,
                      "classes": classes})
    path = os.path.join(folder, "roidb.json")
    save_roidb(path, roidb, [{"id": c + 1, "name": "c%d" % c} for c in range(5)], "test")
    return path


def weight_difference(a, b, init, rel=1e-4):
    """How far two trainings that should agree ended apart, relative to how far they moved.

    a, b: {name: array} final weights; init: {name: array} the common start (names of `a` missing
    there are skipped). Returns (worst, relative): worst = max over tensors of max|a - b| divided
    by its bound, rel * max|a - init| + 4 float32 ulps of max|a| (a tensor that barely moves still
    rounds differently) + 1e-6 of the largest move of any tensor (a tensor whose exact gradient is
    zero, such as a bias before a training BatchNorm, moves by float noise only); relative =
    ||a - b|| / ||a - init|| over all tensors (L2). Asserts that the weights moved
    (||a - init|| > 1e-3 ||init||)."""
    import numpy as np
    names = [n for n in a if n in init]
    one, two, start = ({n: np.asarray(x[n], np.float64) for n in names} for x in (a, b, init))
    moves = {n: np.abs(one[n] - start[n]).max() for n in names}
    floor = 1e-6 * max(moves.values())
    worst = max(np.abs(one[n] - two[n]).max() / (rel * moves[n] + 4 * np.spacing(np.float32(np.abs(one[n]).max()))
                                                 + floor) for n in names)
    diff2 = sum(((one[n] - two[n]) ** 2).sum() for n in names)
    update2 = sum(((one[n] - start[n]) ** 2).sum() for n in names)
    init2 = sum((start[n] ** 2).sum() for n in names)
    assert np.sqrt(update2 / init2) > 1e-3, "the weights hardly moved"
    print("weight_difference: worst %.3g relative %.3g move %.3g" % (worst, np.sqrt(diff2 / update2),
                                                                       np.sqrt(update2 / init2)))
    return worst, float(np.sqrt(diff2 / update2))
