"""Convert Swin / Twins-SVT / ViT checkpoints to greenmim_mm / mmpretrain / mmdet backbone weights.

One module per source layout: :mod:`.ours` (``greenmim_mm``, ``localmim``),
:mod:`.official_greenmim` (``official-g1``, ``official-g3``), :mod:`.timm_swin` (``timm``),
:mod:`.official_localmim` (``localmim-official-swin``, ``localmim-official-vit``), :mod:`.twins`
(``timm-twins``, ``official-twins``); :mod:`.common` (reading, errors), :mod:`.swin_windows`
(the target layout's check and window resizing) and :mod:`.dispatch` (``--src`` -> converter).

Sources (``SOURCES``):

* ``greenmim_mm``: our pre-training (or any mmpretrain-style) checkpoint; keeps ``backbone.*``,
  drops mask state (mmpretrain SimMIM's ``backbone.mask_token``) and stale ``attn_mask`` buffers,
  and renames the older single final ``norm.*`` to ``norm{last stage}.*`` (as mmpretrain's
  ``SwinTransformer`` does when loading such a checkpoint).
* ``official-g1``: the official GreenMIM code before commit ``b981012`` (G1 and G2, including the
  released May-2022 checkpoints): Microsoft-Swin keys, PatchMerging concatenates its 2x2
  neighbours row-first, (0,0),(0,1),(1,0),(1,1).
* ``official-g3``: official GreenMIM from ``b981012`` on, Microsoft Swin, SimMIM, and old-format
  timm checkpoints: neighbours in Swin's order (0,0),(1,0),(0,1),(1,1).
* ``timm``: timm >= 0.6 Swin state dicts (downsample at the start of stage i); an old
  Microsoft-format one (downsample at the end) is converted as ``official-g3``.
* ``localmim``: our LocalMIM pre-training checkpoint: ``backbone.*`` without the per-head
  LayerNorms of outputs taken after patch merging (``norm{i}`` wider than stage i); decoders,
  heads, target generators dropped. A LocalMIM Twins checkpoint is kept whole (mmpretrain
  ``SVT`` layout: no head norm was added) and a LocalMIM ViT one too (mmpretrain
  ``VisionTransformer`` layout; its per-head norms live in the decoders); ``greenmim_mm`` takes
  both as well.
* ``localmim-official-swin``: official LocalMIM Swin (LocalMIM's official code): Microsoft keys
  under ``encoder.``, per-head norms ``encoder.norm.{k}``, ``decoder.*`` and ``hog_enc.*``
  dropped; its sparse PatchMerging concatenates the 2x2 neighbours row-first (official LocalMIM
  code), reordered as ``official-g1``.
* ``localmim-official-vit``: official LocalMIM ViT (timm/MAE keys) -> mmpretrain
  ``VisionTransformer`` (``backbone.layers.{i}...``); per-head norms, decoders, HOG dropped.

Twins-SVT sources (output in mmpretrain's ``SVT`` / our ``GreenTwinsSVT`` layout):

* ``timm-twins``: timm ``twins_svt_*`` state dicts (PEG with its residual);
* ``official-twins``: official GreenMIM Twins-L pre-training checkpoints (PEG without residual,
  folded in; spconv weights permuted; a Twins classification file is detected and converted as
  ``timm-twins``). Details: :mod:`.twins`.
* ``greenmim_mm`` also accepts our Twins pre-training checkpoints (kept as they are; the window
  options apply to Swin only).

Output: ``{'state_dict': {'backbone.<key>': tensor}}`` in mmpretrain's ``SwinTransformer`` layout,
PatchMerging channels in mmcv's ``nn.Unfold`` order (input channel ``4 * c + k`` with neighbours
k = (0,0),(0,1),(1,0),(1,1)), ``relative_position_index`` buffers rebuilt for the target windows,
tables resized with mmpretrain's ``resize_relative_position_bias_table`` when a window changes.

Loading the output:

* greenmim_mm / mmpretrain ``SwinTransformer``:
  ``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')`` (or strict
  ``load_state_dict`` of the stripped keys; ``norm{i}`` exist only for the source's out indices).
* mmdet ``SwinTransformer``: ``convert_weights=False``, ``init_cfg=dict(type='Pretrained',
  checkpoint=OUT)``. mmdet's ``init_weights`` ignores ``prefix``: it keeps only keys starting with
  ``backbone.`` and strips that itself, then loads with ``strict=False``, so shapes must match
  (build it with the converted windows). mmdet's Swin keeps the shifted-window shift where a
  stage's map equals the window (e.g. 7x7 at 224 px, window 7), mmpretrain's and ours drop it, so
  the outputs agree exactly only where no stage map equals its window (e.g. 800x1333, 256x320).
"""
from .common import ConversionError, guess_layout, read_checkpoint, summarize_dropped
from .dispatch import (OUR_SOURCES, SOURCES, TWINS_SOURCES, convert_checkpoint, convert_file,
                       convert_twins_checkpoint)
from .official_greenmim import (MERGE_ORDERS, convert_official, official_state_dict,
                                permute_merge, rename_swin)
from .official_localmim import convert_localmim_swin, convert_localmim_vit
from .ours import (greenmim_mm_backbone, localmim_backbone, mmpretrain_backbone_keys,
                   our_vit_backbone)
from .swin_windows import fresh_relative_position_index, set_windows, swin_geometry
from .timm_swin import convert_timm
from .twins import (SPCONV_KEYS, check_twins_source, convert_twins, fold_peg_residual,
                    is_twins_state_dict, rename_twins, spconv_weights_to_torch,
                    twins_checkpoint_kind)

__all__ = [
    'ConversionError', 'guess_layout', 'read_checkpoint', 'summarize_dropped', 'OUR_SOURCES',
    'SOURCES', 'TWINS_SOURCES', 'convert_checkpoint', 'convert_file', 'convert_twins_checkpoint',
    'MERGE_ORDERS', 'convert_official', 'official_state_dict', 'permute_merge', 'rename_swin',
    'convert_localmim_swin', 'convert_localmim_vit', 'greenmim_mm_backbone', 'localmim_backbone',
    'mmpretrain_backbone_keys', 'our_vit_backbone', 'fresh_relative_position_index',
    'set_windows', 'swin_geometry', 'convert_timm', 'SPCONV_KEYS', 'check_twins_source',
    'convert_twins', 'fold_peg_residual', 'is_twins_state_dict', 'rename_twins',
    'spconv_weights_to_torch', 'twins_checkpoint_kind'
]
