"""What every converter shares: :class:`ConversionError`, reading a file with the safe loader,
unwrapping an mmengine / MAE-style checkpoint, and the messages that name keys and guess the
``--src`` a state dict's keys fit."""
import os.path as osp
import re
from typing import Dict, Optional, Sequence, Tuple

import torch


_BUFFER_SUFFIXES = ('relative_position_index', 'attn_mask', 'relative_coords_table')


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the problem."""


def read_checkpoint(path: str) -> dict:
    """Load ``path`` on the CPU with greenmim_mm's safe loader
    (:func:`greenmim_mm.checkpoint.loading.load_checkpoint_file`: weights-only, inert classes
    only, for every source, so that a wrong ``--src`` gets a layout error rather than a read
    error). Raises :class:`ConversionError` naming the file and the cause."""
    from greenmim_mm.checkpoint.loading import CheckpointLoadError, load_checkpoint_file
    if not osp.isfile(path):
        raise ConversionError(f'input checkpoint not found: {path}')
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu')
    except CheckpointLoadError as err:
        raise ConversionError(str(err)) from None
    if not isinstance(ckpt, dict):
        raise ConversionError(f'{path} holds a {type(ckpt).__name__}, not a checkpoint dict')
    return ckpt


def _tensor_dict(obj, what: str) -> Dict[str, torch.Tensor]:
    """``obj`` as a str -> tensor dict; non-tensor entries are an error."""
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f'{what}: expected a non-empty dict of tensors, got '
                              f'{type(obj).__name__}')
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ConversionError(f'{what}: entries that are not tensors: {_sample(bad)}')
    return dict(obj)


def summarize_dropped(keys: Sequence[str]) -> str:
    """'decoder_embed.*, head.*, mask_token, 12 buffers (...)' for a list of dropped keys."""
    buffers = [k for k in keys if k.endswith(_BUFFER_SUFFIXES)]
    groups = sorted({k.split('.')[0] + ('.*' if '.' in k else '') for k in keys
                     if k not in buffers})
    more = [f'{len(buffers)} buffers ({", ".join(sorted({k.split(".")[-1] for k in buffers}))})'
            ] if buffers else []
    return ', '.join(groups + more)


def _sample(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f' ... (+{len(keys) - n} more)' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def _unwrap(ckpt: dict) -> Tuple[dict, str]:
    """The state dict inside an mmengine ('state_dict') / MAE-style ('model') checkpoint."""
    for name in ('state_dict', 'model'):
        if isinstance(ckpt.get(name), dict):
            return ckpt[name], f"checkpoint['{name}']"
    return ckpt, 'checkpoint'


def _strip_prefix(sd: dict, prefix: str) -> dict:
    """Keys under ``prefix`` with it removed, or ``sd`` itself when no key has it."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def guess_layout(keys) -> Optional[str]:
    """Best guess of the ``--src`` that fits a state dict's keys (for error messages)."""
    keys = {re.sub(r'^(module\.|encoder\.|backbone\.)+', '', k) for k in keys}
    if 'patch_embed.projection.weight' in keys and 'layers.0.ln1.weight' in keys:
        return 'localmim or greenmim_mm (mmpretrain ViT layout)'
    if 'patch_embed.projection.weight' in keys or 'patch_embeds.0.projection.weight' in keys:
        return 'greenmim_mm'
    if 'patch_embeds.0.proj.weight' in keys:
        return 'timm-twins or official-twins (original Twins layout)'
    if 'patch_embed.proj.weight' in keys:
        if any(k.startswith('layers.0.downsample.') for k in keys):
            return 'official-g1 or official-g3 (Microsoft-Swin layout)'
        return 'timm'
    return None


def _layout_error(src: str, expected: str, keys) -> ConversionError:
    guess = guess_layout(keys)
    hint = f'; it looks like --src {guess}' if guess and not guess.startswith(src) else ''
    return ConversionError(f'--src {src}: unrecognised layout: expected {expected}; '
                           f'found keys: {_sample(list(keys))}{hint}')
