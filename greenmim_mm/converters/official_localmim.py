"""Official LocalMIM checkpoints (LocalMIM's official code).

* ``localmim-official-swin``: Microsoft keys under ``encoder.``, per-head norms
  ``encoder.norm.{k}``, ``decoder.*`` and ``hog_enc.*`` dropped; its sparse PatchMerging
  concatenates the 2x2 neighbours row-first, reordered as ``official-g1``.
* ``localmim-official-vit``: timm/MAE keys -> mmpretrain ``VisionTransformer``
  (``backbone.layers.{i}...``); per-head norms, decoders, HOG dropped.
"""
import re
from typing import List, Optional, Tuple

from .common import ConversionError, _layout_error, _sample, _strip_prefix, _tensor_dict, _unwrap
from .official_greenmim import MERGE_ORDERS, official_state_dict, rename_swin


def convert_localmim_swin(ckpt: dict) -> Tuple[dict, List[str]]:
    """Official LocalMIM Swin -> ours: ``encoder.*`` kept without its per-head norms
    ``encoder.norm.{k}``; row-first PatchMerging channels reordered (``official-g1``)."""
    sd, dropped = official_state_dict(ckpt)
    heads = [k for k in sd if re.match(r'norm\.\d+\.', k)]
    dropped += [f'encoder.{k}' for k in heads]
    sd = {k: v for k, v in sd.items() if k not in heads}
    sd, more = rename_swin(sd, 'localmim-official-swin', MERGE_ORDERS['official-g1'],
                           downsample_shift=0)
    return sd, dropped + more


# timm/MAE ViT block keys -> mmpretrain VisionTransformer (after ``blocks.{i}.`` / ``layers.{i}.``).
_VIT_BLOCK_KEYS = {
    'norm1': 'ln1', 'attn.qkv': 'attn.qkv', 'attn.proj': 'attn.proj', 'norm2': 'ln2',
    'mlp.fc1': 'ffn.layers.0.0', 'mlp.fc2': 'ffn.layers.1',
}


def convert_localmim_vit(ckpt: dict) -> Tuple[dict, List[str]]:
    """Official LocalMIM ViT (timm/MAE keys, ``checkpoint['model']``) -> mmpretrain
    ``VisionTransformer`` keys. Kept: cls token, position embedding (with its cls slot, as
    mmpretrain's), patch embedding, blocks, and a final ``norm`` (as ``ln1``) if there is one;
    dropped: per-head norms ``norm.{k}``, decoders, HOG, mask token. Any other key is an error.
    """
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    if 'patch_embed.proj.weight' not in sd or not any(k.startswith('blocks.') for k in sd):
        raise _layout_error('localmim-official-vit', "timm/MAE ViT keys 'patch_embed.proj.weight', "
                            "'blocks.{i}.attn.qkv.weight', ... in checkpoint['model']", sd)
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        new = _vit_key(key)
        if new is not None:
            out[new] = value
        elif re.match(r'(norm\.\d+\.|decoder|hog_enc|mask_token)', key):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError('--src localmim-official-vit: keys with no counterpart in the '
                              f'mmpretrain ViT layout: {_sample(unknown)}')
    return out, dropped


def _vit_key(key: str) -> Optional[str]:
    """mmpretrain ViT name of one timm/MAE key, None when it has none."""
    if key in ('cls_token', 'pos_embed'):
        return key
    m = re.fullmatch(r'patch_embed\.proj\.(weight|bias)', key)
    if m:
        return f'patch_embed.projection.{m.group(1)}'
    m = re.fullmatch(r'blocks\.(\d+)\.(.+)\.(weight|bias)', key)
    if m and m.group(2) in _VIT_BLOCK_KEYS:
        return f'layers.{m.group(1)}.{_VIT_BLOCK_KEYS[m.group(2)]}.{m.group(3)}'
    m = re.fullmatch(r'norm\.(weight|bias)', key)
    return f'ln1.{m.group(1)}' if m else None
