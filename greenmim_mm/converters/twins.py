"""Twins-SVT checkpoints (``--src timm-twins``, ``official-twins``) -> mmpretrain's ``SVT`` /
our ``GreenTwinsSVT`` layout.

* ``timm-twins``: timm ``twins_svt_*`` state dicts (``patch_embeds.i.proj``, ``blocks.s.j``,
  ``pos_block.s.proj.0``, final ``norm`` -> ``norm_after_stage3``; ``head.*`` dropped). Build the
  target with ``qkv_bias=True, norm_after_stage=[False, False, False, True]``; timm's block and
  final LayerNorms use eps 1e-6 (``norm_cfg=dict(type='LN', eps=1e-6)``).
* ``official-twins``: official GreenMIM Twins-L pre-training checkpoints (``checkpoint['model']``,
  ``encoder.`` keys in the same original Twins layout). Their PEG has no residual (official
  GreenMIM code, modeling/green_twins_models.py); it is folded in exactly by subtracting 1 from
  the centre tap of every PEG depthwise kernel. The file's kind is checked first
  (:func:`twins_checkpoint_kind`): a Twins classification file (Meituan-AutoML/Twins
  ``alt_gvt_*.pth``: classifier ``head.*``, no ``encoder.``/decoder keys, torch-layout
  convolutions; its PEG has the residual) is converted as ``timm-twins`` with a note; a file that
  is neither recognisably is refused, and ``timm-twins`` refuses a GreenMIM pre-training file.
  Its stage patch embeddings 1-3 and GSA ``sr`` convolutions are spconv ``SparseConv2d``: their
  (out, kh, kw, in) weights (spconv >= 2.2) are permuted to torch's (out, in, kh, kw).
"""
import re
from typing import List, Optional, Tuple

import torch

from .common import (ConversionError, _layout_error, _sample, _strip_prefix, _tensor_dict,
                     _unwrap, summarize_dropped)


_TWINS_RULES = [  # original Twins (timm / official) key -> mmpretrain SVT key
    (r'patch_embeds\.(\d+)\.proj\.(weight|bias)$', r'patch_embeds.\1.projection.\2'),
    (r'patch_embeds\.(\d+)\.norm\.(weight|bias)$', r'patch_embeds.\1.norm.\2'),
    (r'blocks\.(\d+)\.(\d+)\.mlp\.fc1\.(weight|bias)$', r'stages.\1.\2.ffn.layers.0.0.\3'),
    (r'blocks\.(\d+)\.(\d+)\.mlp\.fc2\.(weight|bias)$', r'stages.\1.\2.ffn.layers.1.\3'),
    (r'blocks\.(\d+)\.(\d+)\.(norm1|norm2)\.(weight|bias)$', r'stages.\1.\2.\3.\4'),
    (r'blocks\.(\d+)\.(\d+)\.attn\.(qkv|q|kv|sr|norm|proj)\.(weight|bias)$',
     r'stages.\1.\2.attn.\3.\4'),
    (r'pos_block\.(\d+)\.proj\.0\.(weight|bias)$', r'position_encodings.\1.proj.\2'),
]


def is_twins_state_dict(sd: dict) -> bool:
    """True for an mmpretrain-layout Twins (SVT/PCPVT) backbone state dict."""
    return 'patch_embeds.0.projection.weight' in sd


def rename_twins(sd: dict, src: str) -> Tuple[dict, List[str]]:
    """Original Twins keys (timm / official GreenMIM) -> mmpretrain ``SVT`` keys; returns the
    renamed dict and the dropped keys (``head.*``). ConversionError for an unknown key."""
    if 'patch_embeds.0.proj.weight' not in sd:
        raise _layout_error(src, "original Twins keys 'patch_embeds.0.proj.weight', "
                            "'blocks.0.0.attn.qkv.weight', 'pos_block.0.proj.0.weight'", sd)
    last = max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        if key.startswith('head.'):
            dropped.append(key)
            continue
        if key in ('norm.weight', 'norm.bias'):
            out[f'norm_after_stage{last}.{key[5:]}'] = value
            continue
        for pattern, repl in _TWINS_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"--src {src}: keys with no counterpart in mmpretrain's SVT: "
                              f'{_sample(unknown)}')
    return out, dropped


def fold_peg_residual(sd: dict) -> List[str]:
    """Official GreenMIM's PEG is ``conv(x)`` without Twins' residual ``+ x``: subtract 1 from
    the centre tap of every PEG depthwise kernel (in place) so that ``conv_new(x) + x`` equals
    ``conv(x)`` exactly; returns the folded keys."""
    folded = []
    for key in sorted(k for k in sd if re.match(r'position_encodings\.\d+\.proj\.weight$', k)):
        weight = sd[key].clone()
        if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] % 2 == 0:
            raise ConversionError(f'{key}: expected a depthwise (C, 1, k, k) kernel with odd k, '
                                  f'got {tuple(weight.shape)}')
        weight[:, 0, weight.shape[2] // 2, weight.shape[3] // 2] -= 1
        sd[key] = weight
        folded.append(key)
    return folded


# original Twins names of the spconv weights
SPCONV_KEYS = r'(patch_embeds\.[1-9]\d*\.proj|blocks\.\d+\.\d+\.attn\.sr)\.weight$'


def spconv_weights_to_torch(sd: dict, prefix: str = '') -> List[str]:
    """Official GreenMIM Twins runs its stage patch embeddings (``patch_embeds.1-3``) and GSA
    key/value sub-sampling (``attn.sr``) as spconv ``SparseConv2d``, whose weights spconv >= 2.2
    stores as (out, kh, kw, in) ("KRSC"); permute those to torch's (out, in, kh, kw) in place.
    ``sd`` has the original Twins key names (``prefix``, e.g. 'encoder.', stripped: errors name
    the key as in the file). Weights already in torch's layout (a re-saved checkpoint) are kept.
    Returns the permuted keys. ConversionError for any other layout (spconv < 2.2 kept the
    kernel dimensions first, (kh, kw, ., .), ambiguous for the square GSA kernels) or an
    ambiguous shape."""
    permuted = []
    for key in sorted(k for k in sd if re.match(SPCONV_KEYS, k)):
        w = sd[key]
        krsc = w.dim() == 4 and w.shape[1] == w.shape[2]
        torch_layout = w.dim() == 4 and w.shape[2] == w.shape[3]
        bias = sd.get(key[:-len('weight')] + 'bias')
        out_ok = bias is None or w.shape[0] == bias.shape[0]
        if krsc == torch_layout or not out_ok:
            raise ConversionError(
                f'{prefix}{key}: cannot tell the sparse-convolution weight layout of shape '
                f'{tuple(w.shape)}; expected spconv >= 2.2 (out, kh, kw, in) or torch '
                f'(out, in, kh, kw) (spconv < 2.2 checkpoints: load them with spconv >= 2.2 and '
                f'save again)')
        if krsc:
            sd[key] = w.permute(0, 3, 1, 2).contiguous()
            permuted.append(key)
    return permuted


def twins_checkpoint_kind(sd: dict) -> Tuple[Optional[str], str]:
    """What an original-layout Twins state dict (keys as in the file, ``module.`` stripped) is,
    and why: (kind, evidence).

    * ``'greenmim'``: an official GreenMIM Twins pre-training checkpoint (official GreenMIM code,
      modeling/green_twins_models.py; its PEG has no residual): ``encoder.`` keys, decoder /
      mask-token keys, or stage-embedding / GSA ``sr`` weights in spconv's (out, kh, kw, in)
      layout (``util/extract_backbone.py`` keeps them so);
    * ``'classification'``: a Twins classifier (Meituan-AutoML/Twins ``alt_gvt_*.pth``, timm
      ``twins_svt_*``; PEG with the residual): a classifier ``head.*`` and none of the above;
    * None: neither can be told (e.g. a bare backbone in torch's layout).
    """
    prefixed = [k for k in sd if k.startswith(('encoder.', 'decoder', 'mask_token'))]
    if prefixed:
        return 'greenmim', f'GreenMIM pre-training keys ({_sample(prefixed, 2)})'
    spconv = [k for k, w in sd.items() if re.match(SPCONV_KEYS, k) and _spconv_layout(w)]
    if spconv:
        return 'greenmim', (f'spconv-layout (out, kh, kw, in) weights ({_sample(spconv, 2)}) '
                            'of the sparse GreenMIM encoder')
    head = [k for k in sd if k.startswith('head.')]
    if head:
        return 'classification', (f'a classifier ({_sample(head, 2)}), no GreenMIM pre-training '
                                   "keys, convolutions in torch's layout")
    return None, 'no classifier head, no GreenMIM pre-training keys, torch-layout convolutions'


def _spconv_layout(w: torch.Tensor) -> bool:
    """A 4-D sparse-convolution weight in spconv's (out, kh, kw, in), not torch's layout."""
    return w.dim() == 4 and w.shape[1] == w.shape[2] and w.shape[2] != w.shape[3]


def check_twins_source(sd: dict, src: str) -> Tuple[str, Optional[str]]:
    """The conversion a Twins file needs, from its kind (:func:`twins_checkpoint_kind`):
    (``'official'`` (fold the missing PEG residual, permute the spconv weights) or ``'timm'`` (as
    it is), note). ``--src official-twins`` on a Twins classification file converts it as
    ``timm-twins``, with a note (folding a PEG that has the residual would subtract 1 from every
    centre tap).

    Raises:
        ConversionError: ``--src timm-twins`` on an official GreenMIM pre-training file, or
            ``--src official-twins`` on a file that is neither recognisably; the message names
            the right ``--src``.
    """
    kind, evidence = twins_checkpoint_kind(sd)
    if src == 'timm-twins':
        if kind == 'greenmim':
            raise ConversionError(
                f'--src timm-twins: this is an official GreenMIM Twins pre-training checkpoint '
                f'({evidence}), whose PEG has no residual: use --src official-twins')
        return 'timm', None
    if kind == 'greenmim':
        return 'official', None
    if kind == 'classification':
        return 'timm', (f'a Twins classification checkpoint ({evidence}; its PEG has the '
                        'residual): converted as --src timm-twins, PEG kernels unchanged')
    raise ConversionError(
        '--src official-twins: cannot tell an official GreenMIM Twins pre-training checkpoint '
        "(PEG without residual: 'encoder.'/decoder keys or spconv-layout weights) from a Twins "
        f'classification / timm checkpoint (PEG with residual): {evidence}. For Twins '
        'classification or timm weights use --src timm-twins')


def convert_twins(ckpt: dict, src: str) -> Tuple[dict, List[str]]:
    """``timm-twins`` / ``official-twins`` checkpoint -> (mmpretrain SVT state dict, notes).
    The file's kind is checked first (:func:`check_twins_source`)."""
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    layout, note = check_twins_source(sd, src)
    notes = [note] if note else []
    dropped, prefix, permuted = [], '', []
    if layout == 'official' and any(k.startswith('encoder.') for k in sd):
        dropped = [k for k in sd if not k.startswith('encoder.')]
        sd, prefix = _strip_prefix(sd, 'encoder.'), 'encoder.'
    if layout == 'official':
        permuted = spconv_weights_to_torch(sd, prefix)
    sd, more = rename_twins(sd, src)
    notes += [f'dropped: {summarize_dropped(dropped + more)}'] if dropped + more else []
    if layout == 'official':
        if permuted:
            notes.append(f'{len(permuted)} spconv weights (out, kh, kw, in) -> torch '
                         f'(out, in, kh, kw)')
        folded = fold_peg_residual(sd)
        notes.append(f'PEG residual folded into {len(folded)} kernels (centre tap - 1)')
    else:
        notes.append("timm's block/final LayerNorms use eps 1e-6: build the backbone with "
                     "norm_cfg=dict(type='LN', eps=1e-6)")
    return sd, notes
