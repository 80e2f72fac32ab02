"""``GreenDetectionCheckpointer``: detectron2's ``DetectionCheckpointer`` that loads converted
greenmim_mm backbones, reads every file with greenmim_mm's safe loader
(:func:`greenmim_mm.checkpoint.loading.load_checkpoint_file`: ``weights_only=True`` with an
allow-list of inert classes) and checks that every backbone weight loads.

Accepted files:

* converted greenmim_mm backbones, ``{'state_dict': {'backbone.<key>': tensor}}``
  (``tools/convert_checkpoint.py``): ``backbone.<key>`` goes to ``<prefix>body.<key>`` of the
  model's :class:`~greenmim_mm.detectron2.MMBackbone` (``backbone.bottom_up.body.`` under an FPN).
  Every backbone parameter and buffer must be in the file with its shape, except the per-output
  norms (``MMBackbone.out_norm_pattern``: Swin's ``norm{i}``, Twins' ``norm_after_stage{i}``;
  pre-training has only the last one; the others keep LayerNorm's initialisation, as with
  mmdet's ``init_cfg``), which are logged;
* the same weights in detectron2's layout (:func:`export_detectron2_backbone`,
  ``tools/convert_checkpoint_detectron2.py``; ``__author__ == 'greenmim_mm'``), which a plain
  ``DetectionCheckpointer`` loads too: checked the same way;
* detectron2 checkpoints (``{'model': ...}``, e.g. ``model_final.pth`` of a run): the backbone
  must match exactly; other modules as detectron2 does it (missing / unexpected keys logged).

Importing :mod:`greenmim_mm.detectron2` (every greenmim_mm LazyConfig does) makes detectron2's
own ``DetectionCheckpointer`` load the same way (:func:`route_detectron2_checkpointer`): the
README's LazyConfig route, detectron2's ``tools/lazyconfig_train_net.py`` with
``train.init_checkpoint=...``, then reads weights with the safe loader and never unpickles a
``.pkl`` (detectron2's ``_load_file`` calls ``pickle.load`` on them). An uncaught
``CheckpointLoadError`` then ends such a script with one error line, no traceback
(:func:`install_one_line_errors`).

Refused before any weight is loaded, naming the file: what the safe loader refuses
(:class:`~greenmim_mm.checkpoint.loading.UnsafeCheckpointError`, ``CheckpointLoadError``) and, with
:class:`CheckpointError` (a ``CheckpointLoadError``), detectron2's pickled model-zoo files
(``.pkl``), files with non-backbone keys under ``state_dict`` (e.g. an unconverted training
checkpoint) and backbone keys that are missing, unexpected or of the wrong shape.
"""
import logging
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from greenmim_mm.checkpoint.loading import CheckpointLoadError, load_checkpoint_file
from greenmim_mm.checkpoint.atomic_files import atomic_torch_save, is_same_file

from .backbone import MMBackbone

SRC_PREFIX = 'backbone.'
FPN_BODY_PREFIX = 'backbone.bottom_up.body.'  # an MMBackbone under detectron2's FPN
AUTHOR = 'greenmim_mm'  # detectron2-layout files of converted backbones
# detectron2's own _load_model, kept before route_detectron2_checkpointer replaces it
_D2_LOAD_MODEL = DetectionCheckpointer.__dict__.get('_greenmim_mm_d2_load_model',
                                                    DetectionCheckpointer._load_model)
_D2_LOAD = DetectionCheckpointer.__dict__.get('_greenmim_mm_d2_load', DetectionCheckpointer.load)


class CheckpointError(CheckpointLoadError):
    """A checkpoint that does not fit the model; nothing was loaded."""


def find_backbone(model: torch.nn.Module) -> Optional[Tuple[str, MMBackbone]]:
    """``('backbone.bottom_up.body.', module)``: the model's one ``MMBackbone`` and the prefix
    of its body's keys; None without one."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, MMBackbone)]
    if len(found) > 1:
        raise CheckpointError(f'the model has {len(found)} greenmim_mm backbones '
                              f'({[name for name, _ in found]}); load them one at a time')
    if not found:
        return None
    name, module = found[0]
    return (f'{name}.body.' if name else 'body.'), module


def body_prefix(model: torch.nn.Module) -> Optional[str]:
    """``'backbone.bottom_up.body.'``: where the model's one ``MMBackbone`` keeps its body."""
    found = find_backbone(model)
    return found[0] if found else None


def _sample(keys: List[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' ... ({len(keys)} in all)' if len(keys) > n else '')


def map_backbone_keys(state_dict: Dict, prefix: str, filename: str) -> Dict[str, torch.Tensor]:
    """A converted backbone's ``backbone.<key>`` -> ``<prefix><key>``.

    Raises:
        CheckpointError: ``state_dict`` is empty or holds keys besides ``backbone.*``.
    """
    others = [k for k in state_dict if not k.startswith(SRC_PREFIX)]
    if others or not state_dict:
        raise CheckpointError(
            f'{filename}: a converted backbone holds only backbone.* keys; found '
            f'{_sample(others) or "none at all"}. Convert it first: '
            'tools/env.sh python tools/convert_checkpoint.py --src greenmim_mm IN OUT')
    return {prefix + k[len(SRC_PREFIX):]: v for k, v in state_dict.items()}


def export_detectron2_backbone(in_path: str, out_path: str, prefix: str = FPN_BODY_PREFIX) -> int:
    """Write a converted backbone (``{'state_dict': {'backbone.*'}}``) in detectron2's layout,
    ``{'model': {'<prefix><key>': tensor}, '__author__': 'greenmim_mm'}``, so that a plain
    ``DetectionCheckpointer`` (e.g. detectron2's ``lazyconfig_train_net.py``) loads it into a model
    whose ``MMBackbone`` (``GreenSwinBackbone``, ``GreenTwinsBackbone``) keeps its body at
    ``prefix`` (default: under an FPN). Written atomically; ``out_path`` must not be ``in_path``.
    Returns the number of tensors.

    Raises:
        CheckpointError: the input is not a converted backbone, or ``out_path`` is ``in_path``.
    """
    if is_same_file(in_path, out_path):
        raise CheckpointError(f'{out_path} is the input file; choose another output path')
    ckpt = load_checkpoint_file(in_path, map_location='cpu')
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt or 'model' in ckpt:
        raise CheckpointError(f'{in_path}: not a converted greenmim_mm backbone '
                              "({'state_dict': {'backbone.*': ...}})")
    weights = map_backbone_keys(ckpt['state_dict'], prefix, in_path)
    atomic_torch_save({'model': weights, '__author__': AUTHOR, 'matching_heuristics': False},
                      out_path)
    return len(weights)


class GreenDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` (same arguments, same saving) with safe, checked loading.

    ``load(path)`` / ``resume_or_load(path, resume=...)`` accept the files in the module
    docstring and raise ``CheckpointLoadError`` (or its :class:`CheckpointError`) for the others.
    """

    _file = '<checkpoint>'  # set by each _load_file
    _backbone_only = False

    def load(self, path: str, *args, **kwargs):
        """detectron2's ``load``; a local file that does not exist is a :class:`CheckpointError`
        naming it (fvcore asserts: a traceback). Under DDP detectron2's own check stays."""
        from torch.nn.parallel import DistributedDataParallel
        if path and '://' not in path and not osp.isfile(path) and \
                not isinstance(self.model, DistributedDataParallel):
            raise CheckpointError(f'checkpoint not found: {path}')
        return _D2_LOAD(self, path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict:
        if filename.endswith('.pkl'):
            raise CheckpointError(
                f'{filename}: detectron2 model-zoo pickles (.pkl) are not loaded here; give a '
                'converted greenmim_mm backbone or a detectron2 .pth checkpoint')
        ckpt = load_checkpoint_file(filename, map_location='cpu')
        if not isinstance(ckpt, dict):
            raise CheckpointError(f'{filename}: expected a dict, got {type(ckpt).__name__}')
        self._file = filename
        self._backbone_only = ('model' not in ckpt and 'state_dict' in ckpt
                               or ckpt.get('__author__') == AUTHOR)
        if 'model' not in ckpt and 'state_dict' in ckpt:
            prefix = body_prefix(self.model)
            if prefix is None:
                raise CheckpointError(f'{filename} is a greenmim_mm backbone, but the model has '
                                      'no greenmim_mm backbone (greenmim_mm.detectron2.MMBackbone)')
            return {'model': map_backbone_keys(ckpt['state_dict'], prefix, filename),
                    '__author__': AUTHOR, 'matching_heuristics': False}
        if 'model' not in ckpt:
            raise CheckpointError(f'{filename}: neither a detectron2 checkpoint (no "model") nor '
                                  'a converted greenmim_mm backbone (no "state_dict")')
        return ckpt

    def _load_model(self, checkpoint: Dict):
        self._check_backbone(checkpoint['model'])
        return _D2_LOAD_MODEL(self, checkpoint)

    def _check_backbone(self, weights: Dict) -> None:
        """Every backbone key of the model in ``weights`` with its shape, and nothing else there."""
        found = find_backbone(self.model)
        if found is None:
            return
        prefix, backbone = found
        weights = {k[len('module.'):] if k.startswith('module.') else k: v
                   for k, v in weights.items()}
        model_sd = {k: v for k, v in self.model.state_dict().items() if k.startswith(prefix)}
        file_keys = {k for k in weights if k.startswith(prefix)}
        missing = sorted(set(model_sd) - file_keys)
        out_norm = re.compile(backbone.out_norm_pattern) if backbone.out_norm_pattern else None
        allowed = [k for k in missing if out_norm and out_norm.match(k[len(prefix):])]
        if not self._backbone_only:
            allowed = []
        missing = [k for k in missing if k not in allowed]
        unexpected = sorted(file_keys - set(model_sd))
        shapes = [f'{k} {tuple(weights[k].shape)} vs {tuple(model_sd[k].shape)}'
                  for k in sorted(file_keys & set(model_sd))
                  if tuple(weights[k].shape) != tuple(model_sd[k].shape)]
        problems = [f'{what}: {_sample(keys)}' for what, keys in
                    (('missing', missing), ('unexpected', unexpected), ('wrong shape', shapes))
                    if keys]
        if problems:
            raise CheckpointError(
                f'{self._file}: backbone weights do not fit the model ({"; ".join(problems)}). '
                'Build the backbone with the checkpoint\'s architecture, or convert the '
                'checkpoint to it (Swin windows: tools/convert_checkpoint.py --window / '
                '--stage-windows)')
        if allowed:
            logging.getLogger(__name__).info(
                'not in %s, keep their initialisation: %s', self._file, _sample(allowed))


_ROUTED = ('load', '_load_file', '_load_model', '_check_backbone', '_file', '_backbone_only')


def route_detectron2_checkpointer() -> None:
    """Give detectron2's ``DetectionCheckpointer`` :class:`GreenDetectionCheckpointer`'s loading
    (safe loader, ``.pkl`` refused, backbone checked), so that scripts holding the plain class
    (detectron2's ``tools/lazyconfig_train_net.py``, ``tools/train_net.py``) load through it.
    Saving is unchanged. Idempotent; called when :mod:`greenmim_mm.detectron2` is imported."""
    DetectionCheckpointer._greenmim_mm_d2_load_model = _D2_LOAD_MODEL
    DetectionCheckpointer._greenmim_mm_d2_load = _D2_LOAD
    for name in _ROUTED:
        setattr(DetectionCheckpointer, name, GreenDetectionCheckpointer.__dict__[name])


def install_one_line_errors() -> None:
    """End the process with one line ``<script>: error: <message>`` (exit status 1, no
    traceback) when a ``CheckpointLoadError`` (a refused or unreadable checkpoint, a user error)
    reaches the top level, e.g. in detectron2's own ``tools/lazyconfig_train_net.py``; every
    other exception keeps Python's traceback. Idempotent."""
    previous = sys.excepthook
    if getattr(previous, '_greenmim_mm', False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, CheckpointLoadError):
            prog = osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
            print(f'{prog}: error: {exc}', file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook._greenmim_mm = True
    sys.excepthook = hook


route_detectron2_checkpointer()
install_one_line_errors()
