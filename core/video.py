"""Video files and cameras for detection_infer.py: frames in, an annotated video and one json line of
detections per frame out, through OpenCV's FFmpeg (opencv-python-headless bundles it).

Outputs for input clip.mp4 (a camera N is named cameraN) in the output folder:
  clip.annotated.mp4  the frames with the boxes drawn (MPEG-4 part 2, `mp4v`: the encoder the
                      OpenCV wheels carry), at the input's frame rate (30 when it reports none)
  clip.jsonl          per frame {"frame": index from 0, "time": seconds, "detections": [rows as
                      in the image json of detection_infer.py]}
Both are written under temporary names and renamed at the end, so a crash leaves no half file
under the final names; Ctrl-C (the way to stop a camera) ends the run and keeps what was done.
"""
import contextlib
import json
import os

import cv2
from tqdm import tqdm

from utils.draw import draw_detections
from utils.errors import UserError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(spec):
    """True for a video file name (by extension) or a camera index (digits, not an existing path)."""
    return spec.lower().endswith(VIDEO_EXTS) or (spec.isdigit() and not os.path.exists(spec))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: FFmpeg and OpenCV's camera backends print there when a source
    does not open, and the error must stay one line."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class VideoSource:
    """An opened video file or camera: .name, .fps, .frames (count, None if unknown), .size
    (width, height) and frames() yielding BGR uint8 (h, w, 3) arrays."""

    def __init__(self, spec):
        camera = spec.isdigit() and not os.path.exists(spec)
        if not camera and not os.path.isfile(spec):
            raise UserError("input not found: %s" % spec)
        what = "camera %s" % spec if camera else "video %s" % spec
        with _quiet_stderr():
            self.cap = cv2.VideoCapture(int(spec) if camera else spec)
            ok, self.first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.cap.release()
            raise UserError("cannot read %s: %s" % (what, "no such camera, or it is busy" if camera else
                                                      "not a video, or a codec OpenCV's FFmpeg cannot decode"))
        self.name = "camera%s" % spec if camera else os.path.splitext(os.path.basename(spec))[0]
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 30.0
        count = 0 if camera else int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frames = count if count > 0 else None
        self.size = (self.first.shape[1], self.first.shape[0])

    def read(self):
        """Frames in order (the first one read at opening included), until the source ends."""
        frame, self.first = self.first, None
        while frame is not None:
            yield frame
            ok, frame = self.cap.read()
            frame = frame if ok else None

    def close(self):
        self.cap.release()


def detection_rows(det, names):
    """(K, 6) detections -> the json rows of detection_infer.py: {"box", "score", "class_id", "class_name"}."""
    return [{"box": [round(float(v), 2) for v in d[:4]], "score": round(float(d[4]), 5),
             "class_id": int(d[5]), "class_name": names[int(d[5])]} for d in det]


def output_paths(out_dir, source):
    """(annotated video, json lines) paths for `source` in `out_dir`."""
    return (os.path.join(out_dir, source.name + ".annotated.mp4"), os.path.join(out_dir, source.name + ".jsonl"))


def run_video(source, out_dir, detect_fn, names, batch=1, max_frames=None):
    """Detect on every frame of `source` (VideoSource), `batch` frames per detect_fn call, and write
    output_paths(); detect_fn: [RGB frames] -> [(K, 6) detections in frame pixels]. Stops after
    `max_frames` frames if given, or at Ctrl-C. Returns (frames done, detections written)."""
    video_path, lines_path = output_paths(out_dir, source)
    tmp_video = os.path.join(out_dir, ".%s.partial-%d.mp4" % (source.name, os.getpid()))
    tmp_lines = lines_path + ".partial-%d" % os.getpid()
    writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), source.fps, source.size)
    if not writer.isOpened():
        raise UserError("cannot write a video to %s (no mp4v encoder in this OpenCV?)" % tmp_video)
    total = min(filter(None, (source.frames, max_frames)), default=None)
    bar = tqdm(total=total, unit="frame", desc=source.name, dynamic_ncols=True, disable=None)
    done, found, finished = 0, 0, False
    try:
        with open(tmp_lines, "w") as lines:
            pending = []
            for frame in source.read():
                pending.append(frame)
                last = max_frames is not None and done + len(pending) >= max_frames
                if len(pending) == batch or last:
                    found += _write_frames(pending, detect_fn, names, writer, lines, done, source.fps)
                    done += len(pending)
                    bar.update(len(pending))
                    pending = []
                if last:
                    break
            if pending:
                found += _write_frames(pending, detect_fn, names, writer, lines, done, source.fps)
                done += len(pending)
                bar.update(len(pending))
        finished = True
    except KeyboardInterrupt:
        print("stopped by Ctrl-C after %d frame(s)" % done)
        finished = True
    finally:
        bar.close()
        writer.release()
        source.close()
        for tmp, final in ((tmp_video, video_path), (tmp_lines, lines_path)):
            if finished and os.path.exists(tmp):
                os.replace(tmp, final)
            elif os.path.exists(tmp):
                os.remove(tmp)
    if source.frames and done < min(source.frames, max_frames or source.frames):
        print("the video ended after %d of its %d frames (the rest did not decode)" % (done, source.frames))
    return done, found


def _write_frames(frames, detect_fn, names, writer, lines, start, fps):
    """Detect, draw and write `frames` (BGR) numbered from `start`; returns the detections written."""
    dets = detect_fn([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])
    for k, (frame, det) in enumerate(zip(frames, dets)):
        writer.write(draw_detections(frame, det[:, :4], det[:, 4], det[:, 5], names, score_thresh=-1.0))
        lines.write(json.dumps({"frame": start + k, "time": round((start + k) / fps, 4),
                                "detections": detection_rows(det, names)}) + "\n")
    return sum(len(d) for d in dets)
