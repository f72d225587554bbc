"""Pretrained weights and frozen parameters for training."""
import logging
import re

from utils.checkpoint import load_params
from utils.config import match_any
from utils.errors import UserError

logger = logging.getLogger(__name__)


def fixed_param_names(arg_names, patterns):
    """Parameters frozen by `ModelParam.pretrain.fixed_param` regexes (inputs and labels excluded)."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise UserError("bad pattern %r in ModelParam.pretrain.fixed_param: %s" % (p, e))
    return [n for n in arg_names if match_any(n, patterns)]


def load_pretrained(path, arg_shapes, aux_shapes, exclude=()):
    """Load `path` for a model with `arg_shapes`/`aux_shapes` ({name: shape}).

    Logs a table of loaded, missing (initialised fresh) and unused parameters. A shape mismatch is an
    error unless the parameter matches a pattern in `exclude` (then it is initialised fresh).
    Returns (arg_params, aux_params) holding only the loaded entries.
    """
    src_arg, src_aux = load_params(path)
    out, mismatched, excluded = ({}, {}), [], []
    for kind, (src, shapes) in enumerate(((src_arg, arg_shapes), (src_aux, aux_shapes))):
        for name, value in src.items():
            if name not in shapes:
                continue
            if match_any(name, exclude):
                excluded.append(name)
            elif tuple(value.shape) != tuple(shapes[name]):
                mismatched.append("%s %s vs model %s" % (name, tuple(value.shape), tuple(shapes[name])))
            else:
                out[kind][name] = value
    if mismatched:
        raise UserError("pretrained %s does not fit the model (%d shape mismatches: %s); list them in "
                        "ModelParam.pretrain.exclude to initialise them fresh"
                        % (path, len(mismatched), ", ".join(mismatched[:3])))
    loaded = set(out[0]) | set(out[1])
    missing = sorted((set(arg_shapes) | set(aux_shapes)) - loaded)
    unused = sorted((set(src_arg) | set(src_aux)) - set(arg_shapes) - set(aux_shapes))
    logger.info("pretrained %s", path)
    for label, names in (("loaded", sorted(loaded)), ("excluded", sorted(excluded)),
                         ("missing (fresh init)", missing), ("unused", unused)):
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        logger.info("  %-22s %5d  %s", label, len(names), shown)
    return out
