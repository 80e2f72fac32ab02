"""timm Swin checkpoints (``--src timm``): timm >= 0.6 state dicts (downsample at the start of
stage i); an old Microsoft-format one (downsample at the end) is converted as ``official-g3``."""
from typing import List, Tuple

from .common import _strip_prefix, _tensor_dict, _unwrap
from .official_greenmim import MERGE_ORDERS, rename_swin


def convert_timm(ckpt: dict) -> Tuple[dict, List[str], bool]:
    """timm Swin (downsample at the start of stage i); an old Microsoft-format one (downsample
    at the end, as timm's own ``checkpoint_filter_fn`` detects it) as official-g3.
    Returns (state dict, dropped keys, whether it was Microsoft-format)."""
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    microsoft = 'layers.0.downsample.reduction.weight' in sd
    sd, dropped = rename_swin(sd, 'timm', MERGE_ORDERS['official-g3'],
                              downsample_shift=0 if microsoft else -1)
    return sd, dropped, microsoft
