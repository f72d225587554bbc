"""detection_infer.py on a video file made here (core/video.py): the annotated video and one json
line per frame, equal to detecting frame by frame, with --score auto thresholds; bad sources."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import run_script
from test_infer import CONFIG, NAMES, SETS, set_args, tiny_params
from utils.errors import UserError


def _clip(path, frames=7, size=(96, 72), fps=12):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 80, np.uint8)
        cv2.circle(frame, (20 + 8 * i, 36), 12, (40, 40, 230), -1)
        cv2.rectangle(frame, (60, 5), (90 - i, 30), (40, 200, 60), -1)
        writer.write(frame)
    writer.release()


def _decoded(path):
    cap, frames = cv2.VideoCapture(str(path)), []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    return frames, cap


def test_video_gives_annotated_frames_and_json_lines_with_auto_thresholds(tmp_path):
    from core.error_analysis import apply_thresholds
    from detection_infer import detect, load_model
    from utils.checkpoint import load_weights
    from utils.config import load_config

    params = tiny_params(tmp_path / "tiny.params", box_scale=0.1, class_names=NAMES)
    _clip(tmp_path / "clip.mp4")
    frames, _ = _decoded(tmp_path / "clip.mp4")
    assert len(frames) == 7
    cfg = load_config(CONFIG, SETS, is_train=False)
    arg, aux, _ = load_weights(params)
    mod = load_model(cfg, arg, aux, params, 1)
    raw = [detect(mod, cfg, [cv2.cvtColor(f, cv2.COLOR_BGR2RGB)], 0.0)[0] for f in frames]
    # thresholds between the scores each class gets, one class switched off: some rows kept, some not
    scores = np.concatenate(raw)
    thresholds = [float(np.median(scores[scores[:, 5] == k, 4])) if (scores[:, 5] == k).any() else 0.5
                  for k in range(5)]
    thresholds[int(scores[0, 5])] = None
    (tmp_path / "thresholds-tiny.json").write_text(json.dumps({"class_names": NAMES, "thresholds": thresholds}))
    want = [apply_thresholds(d, np.array([np.inf if t is None else t for t in thresholds])) for d in raw]
    assert 0 < sum(map(len, want)) < len(scores)

    out = tmp_path / "out"
    res = run_script(["detection_infer.py", "--config", CONFIG, "--params", params, "--input", tmp_path / "clip.mp4",
                      "--out", out, "--score", "auto", "--batch", "3"] + set_args(), timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "score thresholds per class from %s" % (tmp_path / "thresholds-tiny.json") in res.stdout
    assert "7 frame(s)" in res.stdout
    assert sorted(os.listdir(out)) == ["clip.annotated.mp4", "clip.jsonl"]
    lines = [json.loads(l) for l in (out / "clip.jsonl").read_text().splitlines()]
    assert [l["frame"] for l in lines] == list(range(7))
    assert [l["time"] for l in lines] == pytest.approx([k / 12.0 for k in range(7)], abs=1e-3)
    for line, expect in zip(lines, want):
        got = line["detections"]
        assert len(got) == len(expect)
        if len(got):
            np.testing.assert_allclose([d["box"] + [d["score"], d["class_id"]] for d in got], expect, atol=0.02)
            assert all(d["class_name"] == NAMES[d["class_id"]] for d in got)
    drawn, cap = _decoded(out / "clip.annotated.mp4")
    assert len(drawn) == 7 and drawn[0].shape == (72, 96, 3) and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12)


def test_bad_video_and_missing_camera_are_one_line(tmp_path):
    from core.video import VideoSource
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 50)
    res = run_script(["detection_infer.py", "--config", CONFIG, "--params", tmp_path / "none.params",
                      "--input", tmp_path / "broken.mp4", "--out", tmp_path / "out"] + set_args(), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: cannot read video %s: not a video, or a codec OpenCV's "
                                               "FFmpeg cannot decode" % (tmp_path / "broken.mp4")]
    with pytest.raises(UserError, match="^cannot read camera 7: no such camera, or it is busy$"):
        VideoSource("7")
    with pytest.raises(UserError, match="^input not found: .*gone.mp4$"):
        VideoSource(str(tmp_path / "gone.mp4"))
