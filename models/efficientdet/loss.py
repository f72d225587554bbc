"""EfficientDet training losses as stock MXNet symbols (effdet `loss_fn` with `new_focal_loss`).

With N = (number of anchors with cls_target >= 0 in the batch) + 1, held constant for gradients
(computed in the graph, or given: for data parallelism the positives of the whole step, see
`detection_loss`):
- focal = sum over (image, anchor, class) of  a_t * (1 - p_t)^gamma * BCE(x, t_s)  / N, where
  t is the one-hot class target (all-zero rows for background and ignored anchors), p = sigmoid(x),
  p_t = p if t = 1 else 1 - p, a_t = alpha if t = 1 else 1 - alpha, t_s = t*(1 - ls) + 0.5*ls
  (only the cross entropy sees the smoothed target, as in effdet); ignored anchors (-2) add 0.
- box = sum over positive anchors and 4 coordinates of huber(pred - target) / (4 * N), with
  huber(e) = 0.5*min(|e|, d)^2 + d*(|e| - min(|e|, d)).
  effdet masks the box loss with `box_target != 0`; here the mask is `cls_target >= 0`, which
  differs only for a positive whose target has an exact zero coordinate, and trains it too.
- total = focal + box_loss_weight * box.
Inputs must be float32: in fp16 training cast the head outputs before calling `detection_loss`.
"""
import mxnet as mx


def flatten_level_outputs(cls_outputs, box_outputs, num_classes):
    """Per-level head outputs [(N, K*C, H, W)] and [(N, K*4, H, W)], channel = anchor*C + class,
    -> cls_pred (N, A, C) and box_pred (N, A, 4) in anchor order level, y, x, anchor."""
    def flat(outputs, width):
        parts = [mx.sym.reshape(mx.sym.transpose(o, axes=(0, 2, 3, 1)), shape=(0, -1, width))
                 for o in outputs]
        return parts[0] if len(parts) == 1 else mx.sym.concat(*parts, dim=1)
    return flat(cls_outputs, num_classes), flat(box_outputs, 4)


def positives_normaliser(cls_target):
    """cls_target (N, A) -> (1,) symbol: positives in the batch + 1, blocked for gradients."""
    return mx.sym.BlockGrad(mx.sym.sum(cls_target >= 0) + 1.0)


def row_sums(x, width):
    """x (..., width) -> (prod(...), 1): sums over the last axis as one matrix product with a ones
    column. The generic `sum` reduction is single-threaded and several times slower on the class
    logits."""
    return mx.sym.FullyConnected(mx.sym.reshape(x, shape=(-1, width)), weight=mx.sym.ones((1, width)),
                                 num_hidden=1, no_bias=True)


def _focal_terms(x, gamma, label_smoothing):
    """Per-element focal terms of logits x without the alpha factors: (background t=0, positive t=1).

    Log-space form, stable for any logit: softplus(x) = log(1 + e^x) (MXNet's softrelu switches to
    x above 20), log p = x - softplus(x), log(1 - p) = -softplus(x), BCE(x, t) = softplus(x) - x*t.
    """
    sp = mx.sym.Activation(x, act_type="softrelu")
    background = mx.sym.exp((x - sp) * gamma)                   # p^gamma
    background = background * ((sp - x * (0.5 * label_smoothing)) if label_smoothing > 0 else sp)
    positive = mx.sym.exp(sp * -gamma) * (sp - x * (1.0 - 0.5 * label_smoothing))
    return background, positive


def focal_loss(cls_pred, cls_target, normaliser, num_classes, alpha=0.25, gamma=1.5,
               label_smoothing=0.0):
    """Sigmoid focal loss (module docstring): cls_pred (N, A, C) logits, cls_target (N, A) class
    id / -1 background / -2 ignore, normaliser (1,) -> (1,) symbol.

    Computed as every element's background term (t = 0), summed per anchor over the classes, plus,
    at each positive anchor, the positive term of its class minus that class's background term.
    Only the background term runs over all N*A*C logits; the rest is per anchor.
    """
    background, _ = _focal_terms(cls_pred, gamma, label_smoothing)
    per_anchor = mx.sym.reshape_like(row_sums(background, num_classes), cls_target)       # (N, A)
    picked = mx.sym.pick(cls_pred, mx.sym.clip(cls_target, 0, num_classes - 1), axis=2)  # (N, A)
    bg_at_class, pos_at_class = _focal_terms(picked, gamma, label_smoothing)
    total = ((1.0 - alpha) * per_anchor * (cls_target != -2)
             + (alpha * pos_at_class - (1.0 - alpha) * bg_at_class) * (cls_target >= 0))
    return mx.sym.broadcast_div(mx.sym.sum(total), normaliser)


def huber_box_loss(box_pred, box_target, cls_target, normaliser, delta=0.1):
    """Huber box loss on positives (module docstring): box_pred, box_target (N, A, 4), cls_target
    (N, A), normaliser (1,) -> (1,) symbol (sum / (4 * normaliser))."""
    # smooth_l1 with sigma^2 = 1/d is 0.5*e^2/d inside |e| < d and |e| - 0.5*d outside: d times it
    # is the Huber loss above, in one fused op.
    huber = mx.sym.smooth_l1(box_pred - box_target, scalar=(1.0 / delta) ** 0.5) * delta
    positive = mx.sym.expand_dims(cls_target >= 0, axis=2)
    return mx.sym.broadcast_div(mx.sym.sum(mx.sym.broadcast_mul(huber, positive)), normaliser * 4.0)


def detection_loss(cls_outputs, box_outputs, cls_target, box_target, num_classes, alpha=0.25,
                   gamma=1.5, label_smoothing=0.0, delta=0.1, box_loss_weight=50.0, loss_scale=None,
                   normaliser=None):
    """Training outputs for a Module: mx.sym.Group([cls_loss, box_loss]).

    cls_outputs, box_outputs: per-level head symbols [(N, K*C, H, W)], [(N, K*4, H, W)];
    cls_target (N, A) float, box_target (N, A, 4) float, as made by core.targets.
    Outputs (each (1,), named cls_loss_output / box_loss_output): the focal loss and the unweighted
    box loss, for logging; their gradients are scaled 1 and `box_loss_weight`, so backward yields
    the gradient of focal + box_loss_weight * box. `loss_scale` (a (1,) symbol, fp16 training)
    multiplies both outputs and so every gradient; the trainer divides it back out.
    `normaliser` (a (1,) symbol) replaces N: with the positives + 1 of the whole step (every device
    and worker), each replica's loss is its share of the step's loss, so the summed gradients are
    those of one device at the whole batch. None: N from this batch's cls_target.
    Config: HeadParam.focal_alpha, focal_gamma, label_smoothing, huber_delta, box_loss_weight.
    """
    cls_pred, box_pred = flatten_level_outputs(cls_outputs, box_outputs, num_classes)
    norm = positives_normaliser(cls_target) if normaliser is None else mx.sym.BlockGrad(normaliser)
    cls = focal_loss(cls_pred, cls_target, norm, num_classes, alpha, gamma, label_smoothing)
    box = huber_box_loss(box_pred, box_target, cls_target, norm, delta)
    if loss_scale is not None:
        cls, box = cls * loss_scale, box * loss_scale
    return mx.sym.Group([mx.sym.MakeLoss(cls, grad_scale=1.0, name="cls_loss"),
                         mx.sym.MakeLoss(box, grad_scale=box_loss_weight, name="box_loss")])
