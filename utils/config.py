"""Load a config file by path and apply `Class.field=value` overrides, with checking.

Values given as strings (from `--set`) are typed from the existing value; unknown classes and
fields are errors with a did-you-mean suggestion.
"""
import ast
import difflib
import importlib.util
import os
import re
import sys
import types

from utils.errors import UserError


class ConfigSet(types.SimpleNamespace):
    """The config classes by name: cfg.General, cfg.OptimizeParam.schedule, ..."""

    def fields(self):
        """Yield ("Class.sub.field", value) for every setting."""
        def walk(prefix, cls):
            for k, v in sorted(vars(cls).items()):
                if k.startswith("_"):
                    continue
                if isinstance(v, type):
                    yield from walk(prefix + k + ".", v)
                else:
                    yield prefix + k, v
        for name, cls in vars(self).items():
            yield from walk(name + ".", cls)


def match_any(name, patterns):
    """True if a regex of `patterns` is found in `name`: the parameter-name pattern lists of the
    config (ModelParam.pretrain.fixed_param, ModelParam.pretrain.exclude)."""
    return any(re.search(p, name) for p in patterns)


def _suggest(name, options):
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return "; did you mean '%s'?" % close[0] if close else "; choose from %s" % ", ".join(sorted(options))


def _settable(cls):
    return {k: v for k, v in vars(cls).items() if not k.startswith("_")}


def _parse_like(text, current, key):
    """Turn `text` into the type of `current`."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError("%s expects a boolean (true/false), got '%s'" % (key, text))
    if isinstance(current, str):
        return text
    if isinstance(current, int):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if type(value) is not int:  # no silent truncation of 2.5, no True -> 1
            raise UserError("%s expects an integer, got '%s'" % (key, text))
        return value
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise UserError("%s expects a float, got '%s'" % (key, text))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise UserError("%s expects a Python literal like %r, got '%s'" % (key, current, text))
    if isinstance(current, tuple):
        # Tuples of numbers are fixed-length settings such as image_size (H, W) or the mean: a lone
        # number would be a silent 1-tuple. Tuples of tuples (aspect ratios) may change length.
        fixed = current and not isinstance(current[0], (tuple, list))
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(current)):
            raise UserError("%s expects %d values like %r, got '%s'" % (key, len(current), current, text))
        return tuple(value)
    if isinstance(current, list):
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return value


def apply_overrides(classes, overrides):
    """Apply {"Class.field": value} (or "Class.sub.field") to `classes`; returns a ConfigSet."""
    cfg = ConfigSet(**{c.__name__: c for c in classes})
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) < 2:
            raise UserError("override '%s' must look like Class.field=value" % key)
        owner = vars(cfg).get(parts[0])
        if owner is None:
            raise UserError("unknown config class '%s'%s" % (parts[0], _suggest(parts[0], vars(cfg))))
        for depth, part in enumerate(parts[1:], 1):
            fields = _settable(owner)
            if part not in fields:
                where = ".".join(parts[:depth])
                raise UserError("unknown config field '%s' in %s%s" % (part, where, _suggest(part, fields)))
            if depth < len(parts) - 1:
                owner = fields[part]
                if not isinstance(owner, type):
                    raise UserError("'%s' is a field, not a nested class" % ".".join(parts[:depth + 1]))
        current = getattr(owner, parts[-1])
        if isinstance(current, type):
            raise UserError("'%s' is a nested class; set one of its fields" % key)
        if isinstance(value, str) and not isinstance(current, str):
            value = _parse_like(value, current, key)
        setattr(owner, parts[-1], value)
    return cfg


def _int_at_least(lo):
    return lambda v: type(v) is int and v >= lo, "an integer >= %d" % lo


def number_range(lo, hi=None, open_hi=False):
    """(test, words) for a real number in [lo, hi] ([lo, hi) if open_hi; no upper bound if hi is None)."""
    def test(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo:   # `not >=`: NaN fails
            return False
        return hi is None or (v < hi if open_hi else v <= hi)
    if hi is None:
        return test, "a number >= %g" % lo
    return test, "a number in [%g, %g%s" % (lo, hi, ")" if open_hi else "]")


def _size(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(type(x) is int and x >= 1 for x in v)


def _positive(v):
    return number_range(0)[0](v) and v > 0


def _aspect_ratios(v):
    return isinstance(v, (tuple, list)) and len(v) >= 1 and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(_positive(x) for x in p) for p in v)


# Values that cannot work, checked at load so they fail as one line naming the field, not as a
# traceback deep in MXNet: (field, (test, allowed range in words)).
LIMITS = [
    ("General.batch_image", _int_at_least(1)),
    ("General.log_frequency", _int_at_least(1)),
    ("General.checkpoint_iters", _int_at_least(0)),
    ("General.keep_last", _int_at_least(1)),
    ("DatasetParam.num_classes", _int_at_least(1)),
    ("DatasetParam.image_size", (_size, "two integers >= 1, (H, W)")),
    ("DatasetParam.num_workers", _int_at_least(0)),
    ("DatasetParam.prefetch", _int_at_least(0)),
    ("DatasetParam.hflip_prob", number_range(0, 1)),
    ("AnchorParam.scale", (_positive, "a number > 0")),
    ("AnchorParam.num_scales", _int_at_least(1)),
    ("AnchorParam.aspect_ratios", (_aspect_ratios, "a non-empty list of (x, y) pairs of numbers > 0")),
    ("AnchorParam.pos_iou", number_range(0, 1)),
    ("AnchorParam.neg_iou", number_range(0, 1)),
    ("DatasetParam.crop_min_visible", number_range(0, 1)),
    ("KvstoreParam.cpu_devices", _int_at_least(0)),
    ("BackboneParam.drop_connect", number_range(0, 1, open_hi=True)),
    ("OptimizeParam.accumulate", _int_at_least(1)),
    ("OptimizeParam.lr_per_64", number_range(0)),
    ("OptimizeParam.wd", number_range(0)),
    ("OptimizeParam.ema_decay", number_range(0, 1, open_hi=True)),
    ("OptimizeParam.clip_gradient", number_range(0)),
    ("OptimizeParam.early_stop_patience", _int_at_least(0)),
    ("TestParam.eval_every", _int_at_least(0)),
    ("TestParam.score_thresh", number_range(0, 1)),
    ("TestParam.nms_thresh", number_range(0, 1)),
    ("TestParam.max_det", _int_at_least(1)),
    ("TestParam.topk_candidates", _int_at_least(1)),
]

# Post-processing ranks (candidate, class) pairs by float32 flat index, exact below 2^24.
MAX_RANKED_PAIRS = (1 << 24) - 1


def check_value(name, value, test, allowed):
    """UserError "NAME=VALUE is out of range: must be ALLOWED" unless test(value)."""
    try:
        ok = test(value)
    except TypeError:
        ok = False
    if not ok:
        raise UserError("%s=%r is out of range: must be %s" % (name, value, allowed))


def validate(cfg):
    """Check every LIMITS field the config has (a custom config may lack some), and that early
    stopping has a validation to watch."""
    fields = dict(cfg.fields())
    for name, (test, allowed) in LIMITS:
        if name in fields:
            check_value(name, fields[name], test, allowed)
    topk, classes = fields.get("TestParam.topk_candidates"), fields.get("DatasetParam.num_classes")
    if topk is not None and classes is not None:
        check_value("TestParam.topk_candidates", topk, lambda k: k * classes <= MAX_RANKED_PAIRS,
                    "at most %d with %d classes (float32 indices)" % (MAX_RANKED_PAIRS // classes, classes))
    if fields.get("OptimizeParam.early_stop_patience") and not fields.get("TestParam.eval_every"):
        raise UserError("OptimizeParam.early_stop_patience=%r needs validation: set TestParam.eval_every > 0 "
                        "(and DatasetParam.val_roidb)" % fields["OptimizeParam.early_stop_patience"])
    return cfg


def parse_sets(items):
    """["A.b=1", ...] -> {"A.b": "1"}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError("--set '%s' must look like Class.field=value" % item)
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_config(path, sets=(), is_train=True):
    """Import the config file at `path`, call its get_config(is_train), apply `--set` items, then
    check the values against LIMITS."""
    if not os.path.isfile(path):
        raise UserError("config file not found: %s" % path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError("config %s has a syntax error at line %s: %s" % (path, e.lineno, e.msg))
    except (ImportError, NameError, AttributeError) as e:
        raise UserError("config %s failed to load: %s: %s" % (path, type(e).__name__, e))
    if not hasattr(module, "get_config"):
        raise UserError("config %s defines no get_config(is_train)" % path)
    cfg = module.get_config(is_train)
    classes = [getattr(cfg, n) for n in vars(cfg)]
    return validate(apply_overrides(classes, parse_sets(sets)))


def add_config_args(parser):
    """The --config/--set pair every entry script takes."""
    parser.add_argument("--config", required=True, help="path to a config file, e.g. config/efficientdet_b0.py")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="Class.field=value",
                        help="override a config field (repeatable), e.g. --set General.batch_image=2")
    return parser
