"""``--src`` dispatch: :func:`convert_checkpoint` picks the converter module of a source layout
(the list is in :mod:`greenmim_mm.converters`), then checks and re-windows the Swin result
(:mod:`.swin_windows`); :func:`convert_file` reads and writes the files."""
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .common import ConversionError, _unwrap, read_checkpoint, summarize_dropped
from .official_greenmim import convert_official
from .official_localmim import convert_localmim_swin, convert_localmim_vit
from .ours import greenmim_mm_backbone, localmim_backbone, our_vit_backbone
from .swin_windows import set_windows, swin_geometry
from .timm_swin import convert_timm
from .twins import convert_twins


SOURCES = ('greenmim_mm', 'official-g1', 'official-g3', 'timm', 'localmim',
           'localmim-official-swin', 'localmim-official-vit', 'timm-twins', 'official-twins')
TWINS_SOURCES = ('timm-twins', 'official-twins')
OUR_SOURCES = ('greenmim_mm', 'localmim')  # our checkpoints: Swin, Twins or (LocalMIM) ViT


def _backbone_key_set(ckpt: dict) -> set:
    """The keys of a checkpoint's state dict with ``module.`` / ``backbone.`` stripped."""
    sd, _ = _unwrap(ckpt)
    if not isinstance(sd, dict):
        return set()
    return {re.sub(r'^(module\.)?(backbone\.)?', '', str(k)) for k in sd}


def _holds_twins(ckpt: dict) -> bool:
    """True if a greenmim_mm checkpoint's backbone is a Twins (mmpretrain SVT layout)."""
    return 'patch_embeds.0.projection.weight' in _backbone_key_set(ckpt)


def _holds_vit(ckpt: dict) -> bool:
    """True if a greenmim_mm checkpoint's backbone is a ViT (mmpretrain ``VisionTransformer`` /
    ``MAEViT`` layout, e.g. our LocalMIM ViT's ``LocalMIMMAEViT``)."""
    keys = _backbone_key_set(ckpt)
    return 'patch_embed.projection.weight' in keys and 'layers.0.ln1.weight' in keys


def convert_twins_checkpoint(ckpt: dict, src: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """A Twins source (``TWINS_SOURCES``, or ``greenmim_mm`` / ``localmim`` holding a Twins
    backbone: kept whole, LocalMIM Twins adds no head norm) -> (``backbone.``-prefixed state
    dict, notes)."""
    if src in OUR_SOURCES:
        sd, dropped = greenmim_mm_backbone(ckpt)
        notes = [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
    else:
        sd, notes = convert_twins(ckpt, src)
    return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes


def convert_checkpoint(ckpt: dict, src: str, window: Optional[int] = None,
                       stage_windows: Optional[Sequence[int]] = None
                       ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert a loaded checkpoint; return (``backbone.``-prefixed state dict, notes)."""
    if src not in SOURCES:
        raise ConversionError(f'unknown source {src!r}; choose one of {SOURCES}')
    if window is not None and stage_windows is not None:
        raise ConversionError('give either window or stage_windows, not both')
    if src in TWINS_SOURCES or (src in OUR_SOURCES and _holds_twins(ckpt)):
        if window is not None or stage_windows is not None:
            raise ConversionError('window / stage_windows apply to Swin only (Twins LSA windows '
                                  'have no parameters)')
        return convert_twins_checkpoint(ckpt, src)
    notes = []
    if src == 'localmim-official-vit' or (src in OUR_SOURCES and _holds_vit(ckpt)):
        if window is not None or stage_windows is not None:
            raise ConversionError(f'--src {src}: a ViT has no windows to set')
        sd, dropped = (convert_localmim_vit(ckpt) if src == 'localmim-official-vit'
                       else our_vit_backbone(ckpt, src))
        notes += [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
        return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes
    if src == 'greenmim_mm':
        sd, dropped = greenmim_mm_backbone(ckpt, notes)
    elif src == 'localmim':
        sd, dropped = localmim_backbone(ckpt)
    elif src == 'localmim-official-swin':
        sd, dropped = convert_localmim_swin(ckpt)
    elif src == 'timm':
        sd, dropped, microsoft = convert_timm(ckpt)
        if microsoft:
            notes.append('Microsoft-format checkpoint (downsample at stage ends): converted with '
                         "official Swin's merge order, as official-g3")
    else:
        sd, dropped = convert_official(ckpt, src)
    geo = swin_geometry(sd)
    if stage_windows is not None:
        targets = list(stage_windows)
    elif window is not None:
        targets = [window] * len(geo['depths'])
    else:
        targets = geo['windows']
    if any(int(w) < 1 for w in targets):
        raise ConversionError(f'windows must be positive, got {targets}')
    notes += [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
    notes += set_windows(sd, geo, [int(w) for w in targets])
    return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes


def convert_file(in_path: str, out_path: str, src: str, window: Optional[int] = None,
                 stage_windows: Optional[Sequence[int]] = None) -> List[str]:
    """Read ``in_path``, convert, write ``{'state_dict': ...}`` to ``out_path``; return notes.

    ``out_path`` must not be ``in_path`` (compared by identity: ``..``, symlinks, hard links) and
    is written atomically (:func:`greenmim_mm.checkpoint.atomic_files.atomic_torch_save`): a
    failed write (full disk) raises :class:`ConversionError` and leaves an existing ``out_path`` as it was.
    """
    from greenmim_mm.checkpoint.atomic_files import atomic_torch_save, is_same_file
    out_dir = osp.dirname(osp.abspath(out_path))
    if not osp.isdir(out_dir):
        raise ConversionError(f'output directory does not exist: {out_dir}')
    if is_same_file(in_path, out_path):
        raise ConversionError(f'output {out_path} is the input file {in_path}: refusing to '
                              'overwrite it; choose another output path')
    state_dict, notes = convert_checkpoint(read_checkpoint(in_path), src, window, stage_windows)
    existed = osp.exists(out_path)
    try:
        atomic_torch_save({'state_dict': state_dict}, out_path)
    except OSError as err:
        kept = f', an existing {osp.basename(out_path)} is unchanged' if existed else ''
        raise ConversionError(f'cannot write {out_path}: {err.strerror or err} '
                              f'(errno {err.errno}); nothing was written{kept}') from None
    return notes
