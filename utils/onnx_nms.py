"""Per-class hard NMS appended to an exported ONNX graph, with onnxruntime's own
NonMaxSuppression kernel instead of the unrolled greedy selection of the MXNet graph
(models/efficientdet/postprocess.py), which exports as ~35 small nodes per kept detection.

The result is the same detections: per-class greedy NMS keeps, in each class, the boxes that no
better box of that class overlaps by IoU > iou_thresh; the first max_det picks of the MXNet graph's
class-aware greedy selection are the max_det best of those per-class survivors. Candidates are
ranked by logit (monotonic in the score, and free of the ties that sigmoid saturation makes), as
the MXNet graph's top-T ranks them.
"""
import numpy as np

LOWEST = -3.0e38     # a score no logit reaches: masks other classes' and unkept candidates


def append_class_nms(model, num_classes, max_det, iou_thresh, score_thresh, output="detections_output"):
    """Replace the outputs cand_boxes (N, T, 4) x1, y1, x2, y2, cand_logits (N, T) and
    cand_classes (N, T) of `model` (an onnx ModelProto, opset >= 13) by `output`
    (N, max_det, 6): x1, y1, x2, y2 divided by the new input `im_scale` (N, 1), score, class; best
    first; rows scoring below max(score_thresh, 0) and missing rows are all -1. In place."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    names = [o.name for o in graph.output]
    if names != ["cand_boxes", "cand_logits", "cand_classes"]:
        raise ValueError("expected outputs cand_boxes, cand_logits, cand_classes, not %s" % names)
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_value
    width = graph.output[1].type.tensor_type.shape.dim[1].dim_value
    keep_k = min(int(max_det), width) if width else int(max_det)

    def const(name, value, dtype=np.float32):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), "nms_" + name))
        return "nms_" + name

    def node(op, inputs, name, **attrs):
        graph.node.append(helper.make_node(op, inputs, ["nms_" + name], name="nms_" + name, **attrs))
        return "nms_" + name

    boxes, logits, classes = names
    # scores (N, C, T): each candidate's logit in its own class's row, LOWEST elsewhere.
    own = node("Equal", [node("Unsqueeze", [classes, const("axis1", [1], np.int64)], "cls_n1t"),
                         const("class_ids", np.arange(num_classes).reshape(1, -1, 1))], "own")
    scores = node("Where", [own, node("Unsqueeze", [logits, "nms_axis1"], "logit_n1t"),
                            const("lowest", LOWEST)], "scores")
    picked = node("NonMaxSuppression", [boxes, scores, const("max_out", [keep_k], np.int64),
                                        const("iou", [iou_thresh]), const("score_min", [LOWEST / 2])],
                  "picked")                                              # (K, 3): image, class, candidate
    at = node("Gather", [picked, const("cols", [0, 2], np.int64)], "at", axis=1)
    ones = node("ConstantOfShape", [node("Slice", [node("Shape", [picked], "k_shape"),
                                                   const("zero", [0], np.int64), const("one", [1], np.int64)],
                                         "k")], "ones", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    kept = node("ScatterND", [node("Mul", [logits, const("f0", 0.0)], "zeros"), at, ones], "kept")
    ranked = node("Where", [node("Cast", [kept], "kept_bool", to=TensorProto.BOOL), logits, "nms_lowest"],
                  "ranked")
    top = helper.make_node("TopK", [ranked, const("k_top", [keep_k], np.int64)], ["nms_top", "nms_top_index"],
                           name="nms_topk", axis=1)
    graph.node.append(top)
    index4 = node("Tile", [node("Unsqueeze", ["nms_top_index", const("axis2", [2], np.int64)], "index3"),
                           const("reps", [1, 1, 4], np.int64)], "index4")
    im_scale = helper.make_tensor_value_info("im_scale", TensorProto.FLOAT, [batch, 1])
    graph.input.append(im_scale)
    xyxy = node("Div", [node("GatherElements", [boxes, index4], "boxes_k", axis=1),
                        node("Unsqueeze", ["im_scale", "nms_axis2"], "scale_n11")], "xyxy")
    score = node("Sigmoid", ["nms_top"], "score")
    cls = node("GatherElements", [classes, "nms_top_index"], "cls", axis=1)
    det = node("Concat", [xyxy, node("Unsqueeze", [score, "nms_axis2"], "score3"),
                          node("Unsqueeze", [cls, "nms_axis2"], "cls3")], "det", axis=2)
    real = node("Greater", ["nms_top", const("real_min", LOWEST / 2)], "real")
    enough = node("Not", [node("Less", [score, const("thresh", max(float(score_thresh), 0.0))], "low")],
                  "enough")
    keep = node("Unsqueeze", [node("And", [real, enough], "keep2"), "nms_axis2"], "keep")
    short = int(max_det) - keep_k           # fewer candidates than max_det: pad with -1 rows
    final = output if not short else "nms_det_short"
    graph.node.append(helper.make_node("Where", [keep, det, const("pad", -1.0)], [final], name="nms_out"))
    if short:
        graph.node.append(helper.make_node("Pad", [final, const("pads", [0, 0, 0, 0, short, 0], np.int64),
                                                   "nms_pad"], [output], name="nms_pad_rows"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, int(max_det), 6]))
    return model
