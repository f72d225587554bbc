"""DetectionLoader: determinism with workers, sharding, padding, corrupt images, eval mode."""
import logging

import numpy as np
import pytest

from core.dataset import load_coco
from core.loader import DetectionLoader
from core.synthetic import make_synthetic
from core.transforms import DetTransform

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
MAX_BOXES = 8


def target_fn(boxes, classes):
    """Fixed-shape stand-in for anchor targets: boxes and classes padded to MAX_BOXES."""
    box_t = np.full((MAX_BOXES, 4), -1, np.float32)
    cls_t = np.full(MAX_BOXES, -1, np.float32)
    box_t[:len(boxes)], cls_t[:len(classes)] = boxes, classes
    return {"cls_target": cls_t, "box_target": box_t}


@pytest.fixture(scope="module")
def roidb(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    paths = make_synthetic(str(root), 10, seed=0, val_fraction=0.0, size=96)
    return load_coco(paths["train"], paths["image_dir"])[0]


def _train(roidb, **kw):
    args = dict(target_fn=target_fn, batch_size=4, shuffle=True, seed=3, prefetch=2)
    args.update(kw)
    return DetectionLoader(roidb, DetTransform((64, 64), MEAN, STD, train=True,
                                               color_jitter=(0.2, 0.2, 0.2, 0.02)), **args)


def _epochs(loader, n):
    out = []
    for _ in range(n):
        out.append([(b.data[0].asnumpy(), [l.asnumpy() for l in b.label], b.pad, b.image_ids.copy())
                    for b in loader])
        loader.reset()
    loader.close()
    return out


def _same(a, b):
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (da, la, pa, ia), (db, lb, pb, ib) in zip(ea, eb):
            assert np.array_equal(da, db) and pa == pb and np.array_equal(ia, ib)
            assert all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_provide_and_batches(roidb):
    loader = _train(roidb, num_workers=0)
    assert [(d.name, d.shape) for d in loader.provide_data] == [("data", (4, 3, 64, 64))]
    assert [(d.name, d.shape) for d in loader.provide_label] == [
        ("box_target", (4, MAX_BOXES, 4)), ("cls_target", (4, MAX_BOXES))]   # sorted names
    batches = list(loader)
    assert [b.pad for b in batches] == [0, 0, 2]          # 10 images, batch 4: 2 wrapped
    assert all(b.data[0].shape == (4, 3, 64, 64) for b in batches)
    ids = np.concatenate([b.image_ids[:4 - b.pad] for b in batches])
    assert sorted(ids.tolist()) == [r["image_id"] for r in roidb]
    assert batches[0].im_info.shape == (4, 3) and (batches[0].im_info[:, :2] == 96).all()
    loader.reset()
    second = np.concatenate([b.image_ids[:4 - b.pad] for b in loader])
    assert sorted(second.tolist()) == sorted(ids.tolist()) and second.tolist() != ids.tolist()
    loader.close()


def test_deterministic_whatever_the_workers(roidb):
    reference = _epochs(_train(roidb, num_workers=0), 2)
    _same(_epochs(_train(roidb, num_workers=2), 2), reference)
    _same(_epochs(_train(roidb, num_workers=3, prefetch=0), 2), reference)
    assert not np.array_equal(reference[0][0][0], reference[1][0][0])   # epochs differ
    other = _epochs(_train(roidb, num_workers=0, seed=4), 1)
    assert not np.array_equal(reference[0][0][0], other[0][0][0])       # seeds differ


def test_shards_disjoint_and_cover_the_epoch(roidb):
    per_rank = []
    for rank in range(3):
        loader = _train(roidb, num_workers=0, batch_size=2, rank=rank, num_ranks=3)
        batches = list(loader)
        loader.close()
        assert len(batches) == 2                          # ceil(ceil(10 / 3) / 2) on every rank
        per_rank.append([i for b in batches for i in b.image_ids[:2 - b.pad]])
    flat = [i for ids in per_rank for i in ids]
    assert len(flat) == len(set(flat)) == len(roidb)
    assert set(flat) == {r["image_id"] for r in roidb}


def test_corrupt_image_is_skipped_and_counted(roidb, tmp_path, caplog):
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    broken = list(roidb) + [dict(roidb[0], image=str(bad), image_id=999)]
    loader = _train(broken, num_workers=2, shuffle=False)
    batches = []
    with caplog.at_level(logging.WARNING, logger="core.loader"):
        for _ in range(2):
            batches += list(loader)
            loader.reset()
    loader.close()
    assert all(b.data[0].shape[0] == 4 for b in batches)
    assert 999 not in {i for b in batches for i in b.image_ids}
    assert loader.skipped == 1                            # one file, though it came up in both epochs
    assert sum("garbage.jpg" in r.getMessage() for r in caplog.records) == 1   # warned once


def test_eval_mode(roidb):
    loader = DetectionLoader(roidb, DetTransform((64, 80), MEAN, STD, train=False), batch_size=3,
                             num_workers=2)
    assert loader.provide_label == []
    batches = list(loader)
    loader.close()
    assert [b.pad for b in batches] == [0, 0, 0, 2] and all(b.label is None for b in batches)
    ids = [i for b in batches for i in b.image_ids[:3 - b.pad]]
    assert ids == [r["image_id"] for r in roidb]          # roidb order, no shuffle
    np.testing.assert_allclose(batches[0].im_info[0], [96, 96, 64 / 96], rtol=1e-6)


def test_seek_resumes_mid_epoch(roidb):
    full = _epochs(_train(roidb, num_workers=2, begin_epoch=5), 1)[0]
    loader = _train(roidb, num_workers=2, begin_epoch=5)
    loader.seek(1)
    _same([list(full[1:])], _epochs(loader, 1))
