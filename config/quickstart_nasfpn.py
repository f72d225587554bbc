"""Quickstart with a NAS-FPN neck: config/quickstart.py (EfficientNet-B0, head 2, 256 px, same data
and recipe) with NAS-FPN 64 x 2 in place of BiFPN 64 x 2. Used by scripts/compare_necks.sh."""
from config.quickstart import get_config as quickstart_config
from utils.config import apply_overrides


def get_config(is_train):
    cfg = quickstart_config(is_train)
    return apply_overrides(list(vars(cfg).values()), {
        "General.name": "quickstart_nasfpn",
        "NeckParam.type": "nasfpn",
    })
