"""Strict loading of pretrained backbone weights given as ``init_cfg=dict(type='Pretrained', ...)``.

mmengine's ``PretrainedInit`` loads with ``strict=False``: weights of another architecture log one
"size mismatch" warning per tensor and training goes on from random initialisation. A backbone
with :class:`StrictPretrainedMixin` instead loads its ``Pretrained`` init_cfg itself and fails with
one :class:`PretrainedLoadError` that names the file and the missing / mis-shaped / unexpected
keys, unless the config asks for a partial load::

    init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.',
                  strict=False)  # optional: load the tensors that fit, warn once about the rest

``checkpoint``, ``prefix`` and ``map_location`` mean what they mean for mmengine's
``PretrainedInit``; the file is read through mmengine's ``CheckpointLoader`` (so the package's
safe-loading rules apply), a ``state_dict`` entry is used when present, and a leading ``module.``
is stripped as mmengine's ``load_checkpoint`` does.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from greenmim_mm.checkpoint.loading import CheckpointLoadError


class PretrainedLoadError(CheckpointLoadError):
    """Pretrained weights that do not fit the backbone; the message names file and keys.
    A ``CheckpointLoadError``, so ``tools/train.py`` / ``tools/test.py`` print it as one line."""


class StrictPretrainedMixin:
    """``init_weights`` that loads a ``Pretrained`` init_cfg strictly (see the module docstring).

    Put it before the mmengine ``BaseModule`` subclass in the bases. Other init_cfg entries and
    the children's own ``init_weights`` run first, as in mmengine; the pretrained weights last.

    Class attributes (regular expressions over the backbone's own key names):
        OPTIONAL_MISSING: keys a checkpoint may lack, keeping their initial values (e.g. output
            norms of stages a pre-training did not output, buffers rebuilt at load time).
        OPTIONAL_UNEXPECTED: keys a checkpoint may hold that the backbone ignores.
    """
    OPTIONAL_MISSING: Sequence[str] = ()
    OPTIONAL_UNEXPECTED: Sequence[str] = ()

    def init_weights(self):
        cfgs = _as_list(self.init_cfg)
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if not pretrained or getattr(self, '_is_init', False):
            return super().init_weights()
        original = self.init_cfg
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        self.init_cfg = others or None  # everything but the pretrained weights, as mmengine
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        for cfg in pretrained:
            options = {k: v for k, v in cfg.items() if k != 'type'}
            self.load_pretrained(**options)

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None,
                        map_location='cpu', strict: bool = True) -> None:
        """Load ``checkpoint`` (its keys under ``prefix``, stripped) into this backbone.

        Every tensor that fits is copied before the check, so after the error the backbone is
        partly loaded; the error is meant to stop the run.

        Raises:
            PretrainedLoadError: ``strict`` and some own key is missing (beyond
                ``OPTIONAL_MISSING``), mis-shaped, or the file holds keys the backbone does not
                have (beyond ``OPTIONAL_UNEXPECTED``); or no key starts with ``prefix``.
        """
        from mmengine.logging import MMLogger
        from mmengine.runner.checkpoint import _load_checkpoint
        state_dict = select_state_dict(_load_checkpoint(checkpoint, map_location=map_location),
                                       checkpoint, prefix)
        missing, unexpected, mismatched = load_collecting(self, state_dict)
        missing_ok = [k for k in missing if _matches(k, self.OPTIONAL_MISSING)]
        unexpected_ok = [k for k in unexpected if _matches(k, self.OPTIONAL_UNEXPECTED)]
        problems = describe_problems([k for k in missing if k not in missing_ok], mismatched,
                                     [k for k in unexpected if k not in unexpected_ok])
        name = type(self).__name__
        where = f'{checkpoint}' + (f" (keys under '{prefix}')" if prefix else '')
        if problems and strict:
            raise PretrainedLoadError(
                f'pretrained weights {where} do not fit {name}: {problems}. Check that the '
                "checkpoint's architecture matches the config, or set strict=False in the "
                "backbone's init_cfg to load only the tensors that fit.")
        logger = MMLogger.get_current_instance()
        loaded = len(self.state_dict()) - len(missing) - len(mismatched)
        kept = f'; kept initial values of {_sample(missing_ok)}' if missing_ok else ''
        ignored = f'; ignored {_sample(unexpected_ok)}' if unexpected_ok else ''
        logger.info(f'{name}: loaded {loaded} tensors from {where}{kept}{ignored}')
        if problems:
            logger.warning(f'{name}: partial load (strict=False) from {where}: {problems}')


def _as_list(init_cfg) -> List[dict]:
    """``init_cfg`` as a list of dicts.

    Raises:
        TypeError: anything but None, a dict or a list/tuple of dicts (an int, a bare checkpoint
            path, a list of paths), as mmengine's ``initialize`` refuses a non-dict config
            (mmpretrain's own backbones fail there with a TypeError or a bare assertion).
    """
    if init_cfg is None:
        return []
    cfgs = list(init_cfg) if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    bad = [c for c in cfgs if not isinstance(c, dict)]
    if bad:
        raise TypeError(f'init_cfg must be a dict or a list of dicts, e.g. '
                        f"dict(type='Pretrained', checkpoint=PATH, prefix='backbone.'); got "
                        f'{init_cfg!r} ({type(bad[0]).__name__} {bad[0]!r} is not a dict)')
    return cfgs


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def _sample(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    more = f' ... (+{len(keys) - n} more)' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def select_state_dict(ckpt, filename: str, prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint as the backbone sees them: ``ckpt['state_dict']`` (or
    ``ckpt``), ``module.`` stripped, only keys under ``prefix`` with the prefix stripped. Version
    metadata (``_metadata``) follows its keys.

    Raises:
        PretrainedLoadError: not a dict, or no key starts with ``prefix``.
    """
    if not isinstance(ckpt, dict):
        raise PretrainedLoadError(f'{filename} holds a {type(ckpt).__name__}, not a checkpoint')
    sd = ckpt.get('state_dict', ckpt)
    metadata = getattr(sd, '_metadata', None)
    sd = OrderedDict((re.sub(r'^module\.', '', k), v) for k, v in sd.items())
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        if not any(k.startswith(prefix) for k in sd):
            raise PretrainedLoadError(f"{filename}: no key starts with the prefix '{prefix}' "
                                      f'(found: {_sample(list(sd))})')
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
    if metadata is not None:
        sd._metadata = _strip_metadata(metadata, prefix)
    return sd


def _strip_metadata(metadata: dict, prefix: Optional[str]) -> OrderedDict:
    """``_metadata`` (module path -> {'version': ...}) re-keyed relative to ``prefix``."""
    out = OrderedDict()
    for key, value in metadata.items():
        key = re.sub(r'^module(\.|$)', '', key)
        if not prefix:
            out[key] = value
        elif key == prefix[:-1]:
            out[''] = value
        elif key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def load_collecting(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor]
                    ) -> Tuple[List[str], List[str], List[str]]:
    """Load ``state_dict`` into ``module`` as ``nn.Module.load_state_dict(strict=True)`` does
    (each module's ``_load_from_state_dict`` with its version metadata and load hooks), copying
    every tensor that fits, but return the problems instead of raising:
    (missing keys, unexpected keys, error messages: one per mis-shaped tensor)."""
    missing, unexpected, errors = [], [], []
    metadata = getattr(state_dict, '_metadata', None)

    def load(mod, local, prefix=''):
        meta = {} if metadata is None else metadata.get(prefix[:-1], {})
        mod._load_from_state_dict(local, prefix, meta, True, missing, unexpected, errors)
        for name, child in mod._modules.items():
            if child is not None:
                child_prefix = f'{prefix}{name}.'
                load(child, {k: v for k, v in local.items() if k.startswith(child_prefix)},
                     child_prefix)

    load(module, OrderedDict(state_dict))
    return missing, unexpected, errors


_SIZE_MISMATCH = re.compile(r'size mismatch for (\S+): copying a param with shape '
                            r'torch\.Size\((\[.*?\])\) from checkpoint, the shape in current '
                            r'model is torch\.Size\((\[.*?\])\)')


def describe_problems(missing: Sequence[str], mismatched: Sequence[str],
                      unexpected: Sequence[str]) -> str:
    """One line: counts and the first keys of each kind ('' when there is no problem)."""
    parts = []
    if mismatched:
        shown = []
        for msg in mismatched[:4]:
            found = _SIZE_MISMATCH.search(msg)
            shown.append(f'{found.group(1)} (file {found.group(2)}, model {found.group(3)})'
                         if found else msg.strip())
        more = f' ... (+{len(mismatched) - 4} more)' if len(mismatched) > 4 else ''
        parts.append(f'{len(mismatched)} mis-shaped: ' + ', '.join(shown) + more)
    if missing:
        parts.append(f'{len(missing)} missing: {_sample(missing)}')
    if unexpected:
        parts.append(f'{len(unexpected)} not in the model: {_sample(unexpected)}')
    return '; '.join(parts)
