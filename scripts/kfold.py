#!/usr/bin/env python
"""Split a roidb into K folds stratified by class presence; write a train/val roidb per fold.

  python scripts/kfold.py --roidb data/wrs/train_roidb.json --k 5 --out data/wrs/folds [--seed 0]

Writes OUT/fold{j}_val.json (fold j) and OUT/fold{j}_train.json (all other folds) for j = 0..K-1,
in the roidb cache format (core.dataset.save_roidb; none may be the --roidb read), and prints per
fold the images and, per class, the validation images that contain it.

An image is labelled by the set of classes present in it (multi-label), and the folds come from
iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011): repeatedly take the class with the
fewest images still unassigned and give each of those images to the fold that still wants most
images of that class (ties: the fold that wants most images overall, then a seeded random choice).
Rare classes are thus spread first, while they can still be balanced. Images without boxes go last,
each to the fold that wants most images. Every image lands in exactly one validation fold.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from core.dataset import load_roidb, save_roidb  # noqa: E402
from utils.errors import UserError, refuse_overwrite, run_cli  # noqa: E402


def _pick(candidates, rng):
    return candidates[0] if len(candidates) == 1 else candidates[rng.randint(len(candidates))]


def stratified_folds(label_sets, num_classes, k, seed=0):
    """Fold index (0..k-1) per image, int64 (N,), for label_sets = [set of class indices] per image."""
    n = len(label_sets)
    rng = np.random.RandomState(seed)
    order = rng.permutation(n)               # a seeded order breaks ties between equal images
    has = np.zeros((n, num_classes), bool)
    for i, labels in enumerate(label_sets):
        has[i, list(labels)] = True
    want_class = np.tile(has.sum(0)[:, None] / float(k), (1, k))  # (C, k) images of c fold j still wants
    want = np.full(k, n / float(k))
    fold = np.full(n, -1, np.int64)

    def assign(i, j):
        fold[i] = j
        want_class[has[i], j] -= 1
        want[j] -= 1

    while True:
        left = has[fold < 0].sum(0)
        if not left.any():
            break
        c = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for i in order:
            if fold[i] < 0 and has[i, c]:
                best = np.flatnonzero(want_class[c] == want_class[c].max())
                best = best[want[best] == want[best].max()]
                assign(i, _pick(best, rng))
    for i in order:
        if fold[i] < 0:
            assign(i, _pick(np.flatnonzero(want == want.max()), rng))
    return fold


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roidb", required=True, help="roidb cache to split")
    parser.add_argument("--k", type=int, required=True, help="number of folds")
    parser.add_argument("--out", required=True, help="folder for fold{j}_train.json / fold{j}_val.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    roidb, categories = load_roidb(args.roidb)
    if not 2 <= args.k <= len(roidb):
        raise UserError("--k must be between 2 and the number of images (%d), got %d" % (len(roidb), args.k))
    outputs = [os.path.join(args.out, "fold%d_%s.json" % (j, s)) for j in range(args.k) for s in ("val", "train")]
    refuse_overwrite([("--out", p) for p in outputs], [("--roidb", args.roidb)])
    fold = stratified_folds([set(r["classes"].tolist()) for r in roidb], len(categories), args.k, args.seed)
    names = [c["name"] for c in categories]
    width = max([len("fold")] + [len(n) for n in names])
    print("images per fold, and per class the validation images that contain it:")
    print("%-*s %6s %6s  %s" % (width, "fold", "train", "val", " ".join("%*s" % (max(5, len(n)), n) for n in names)))
    os.makedirs(args.out, exist_ok=True)
    for j in range(args.k):
        val = [r for r, f in zip(roidb, fold) if f == j]
        train = [r for r, f in zip(roidb, fold) if f != j]
        save_roidb(os.path.join(args.out, "fold%d_val.json" % j), val, categories, "kfold")
        save_roidb(os.path.join(args.out, "fold%d_train.json" % j), train, categories, "kfold")
        present = [sum(1 for r in val if c in r["classes"]) for c in range(len(categories))]
        print("%-*s %6d %6d  %s" % (width, j, len(train), len(val),
                                    " ".join("%*d" % (max(5, len(n)), v) for n, v in zip(names, present))))
    print("wrote %d folds to %s" % (args.k, args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
