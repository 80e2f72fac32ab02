"""Loading checkpoint files safely: ``weights_only=True`` with an allow-list of inert classes.

Every file a user hands us is treated as hostile. :func:`load_checkpoint_file` is the one way
greenmim_mm opens a checkpoint; :func:`register_with_mmengine` routes every scheme of mmengine's
``CheckpointLoader`` through it (local paths, ``http(s)://`` and the schemes that download
through it, ``open-mmlab://``, ``s3://``/``petrel://``, ``pavi://``), i.e. ``load_from``,
``resume``, ``init_cfg=dict(type='Pretrained', ...)``, ``load_checkpoint`` and mmdet's and
mmpretrain's backbones.

Allowed besides what torch's weights-only unpickler allows by default (tensors, containers,
numbers, strings, ``OrderedDict``): inert records standing for numpy's pickled dtypes, arrays and
scalars, rebuilt afterwards as plain numpy values only (:mod:`greenmim_mm.checkpoint.numpy_values`: no
state from the file ever reaches numpy's ``__setstate__``), ``argparse.Namespace`` (the ``args``
of official GreenMIM / MAE / timm training checkpoints) and, for greenmim_mm/mmengine checkpoints
written before the plain format (:mod:`greenmim_mm.checkpoint.plain_format`), mmengine's
``HistoryBuffer`` mapped to the inert :class:`~greenmim_mm.checkpoint.plain_format.LegacyHistoryBuffer`
record, with the ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')`` such pickles use
for its statistics methods answered by a lookup of those four names on that record only. No
allow-listed callable can reach an attribute, a module or code: ``builtins.getattr``, ``eval``,
``__import__``, ``partial`` and the like are refused (torch's own list holds none of them).

Config text is never taken from a file: mmengine executes ``meta['config']`` on resume
(``Runner.resume``) and ``meta['cfg']`` / ``message_hub['runtime_info']['cfg']`` in its
inferencers when no config is given; :func:`drop_config_text` removes all three from what a
loader returns (a warning for ``meta['config']``, which mmengine 0.10 never writes itself).

Resource bounds (docs/checkpoints.md, "Loading safety"): before torch's unpickler runs,
:func:`greenmim_mm.checkpoint.scan.scan_checkpoint` refuses compressed zip records, storages
larger than their records, non-dense tensor rebuilds (quantized, sparse, nested: torch does not
check their strides), calls other than inert constructors of values held in the file
(``bytearray(n)``, ``torch.Tensor(n)``) and dict keys whose hashes can collide; afterwards every
tensor must fit its storage and the numpy values rebuilt stay within the file's
:class:`~greenmim_mm.checkpoint.numpy_values.DecodeBudget`.

A refused file raises :class:`UnsafeCheckpointError` naming the file and the global or the
location of the bad value; an unreadable one (truncated, not a torch file)
:class:`CheckpointLoadError`.
"""
import argparse
import io
import logging
import os
import os.path as osp
import pickle
import re
from typing import Any, Optional

import torch

from .plain_format import HISTORY_STATISTICS, LegacyHistoryBuffer, from_plain
from .numpy_values import (DecodeBudget, UnsafeNumpyValue, UnsafeValue, pickle_globals,
                               restore_numpy)
from .scan import ScanRefusal, scan_checkpoint

_HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
README_SECTION = 'README.md, section "Checkpoint files"'
_INERT = ('tensors, containers, numbers, plain numpy arrays/scalars, argparse.Namespace, mmengine '
          'HistoryBuffer')
_SEE_README = (f'If you wrote this file yourself with your own classes, see {README_SECTION}: '
               'its upgrade tool runs the code in the file and is only for files you produced '
               'yourself')


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and the cause."""


class UnsafeCheckpointError(CheckpointLoadError, pickle.UnpicklingError):
    """A checkpoint that pickles something outside the allow-list (it could run code) or a numpy
    value that is not plain (it could corrupt memory)."""


def _global_name(obj: Any) -> str:
    """How a pickle names ``obj`` (an allow-listed global), else ``<a module.Type>``."""
    for name, value in torch._weights_only_unpickler._get_user_allowed_globals().items():
        if value is obj:
            return name
    if obj is LegacyHistoryBuffer:
        return _HISTORY_BUFFER
    return f'<a {type(obj).__module__}.{type(obj).__qualname__}>'


def _history_statistic(owner, name):
    """Stands in for ``builtins.getattr`` in old mmengine pickles: only
    ``getattr(HistoryBuffer, <statistic>)`` is answered (with the statistic's name)."""
    if owner is LegacyHistoryBuffer and name in HISTORY_STATISTICS:
        return name
    _refuse_getattr(_global_name(owner),
                    repr(name) if isinstance(name, str) else _global_name(name))


def _refuse_getattr(owner: str, name: str) -> None:
    raise pickle.UnpicklingError(
        f'builtins.getattr({owner}, {name[:80]}) (only '
        f'getattr(HistoryBuffer, {"|".join(HISTORY_STATISTICS)}) of old mmengine files is '
        'answered)')


def _scan_getattr(owner: Any, name: Any) -> None:
    """The static scan's check of the getattr stand-in (globals come with their ``.name``)."""
    if getattr(owner, 'name', None) == _HISTORY_BUFFER and type(name) is str \
            and name in HISTORY_STATISTICS:
        return

    def shown(value):
        if hasattr(value, 'name') and isinstance(value.name, str) and value.name:
            return value.name
        return repr(value) if isinstance(value, str) else f'<a {type(value).__name__}>'
    _refuse_getattr(shown(owner), shown(name))


def safe_globals() -> list:
    """The allow-list (for ``torch.serialization.safe_globals``); see the module docstring."""
    return pickle_globals() + [
        argparse.Namespace,
        (LegacyHistoryBuffer, _HISTORY_BUFFER),
        (_history_statistic, 'builtins.getattr'),
    ]


def _unpickler_cause(err: Exception) -> str:
    """The reason in a torch weights-only error, without torch's advice around it (torch wraps
    the unpickler's message in 'Weights only load failed. ... WeightsUnpickler error: ...')."""
    text = str(err).split('\n\nCheck the documentation of torch.load')[0]
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1]
    elif text.startswith('Weights only load failed.'):
        text = text.split('\n\n')[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _refused_global(cause: str) -> Optional[str]:
    for pattern in (r'Unsupported global: GLOBAL (\S+)', r'unsupported GLOBAL (\S+)',
                    r'^(builtins\.getattr\(.+?\) \(only getattr[^\n]*\))$'):
        found = re.search(pattern, cause)
        if found:
            name = found.group(1).rstrip('.')
            # torch prints builtins without their module ('GLOBAL print')
            return name if '.' in name or not name.isidentifier() else f'builtins.{name}'
    return None


def _refused_operation(cause: str) -> Optional[str]:
    """What the file does, for torch's refusals that name no global: a call (REDUCE) of an object
    that is not a function ('Trying to call reduce for unrecognized function {}'), a state set
    (BUILD) on a type that takes none ('Can only build ..., but got <class 'int'>')."""
    found = re.search(r'Trying to call reduce for unrecognized function (.+)$', cause)
    if found and not re.fullmatch(r'[\w.]+', found.group(1).strip()):
        return (f'it calls the object {found.group(1).strip()} as a function (pickle REDUCE), '
                'which is not allowed')
    found = re.search(r"Can only build .* but got <class '([^']+)'>", cause)
    if found:
        return (f'it sets the state of an object of type {found.group(1)} (pickle BUILD), '
                'which is not allowed')
    return None


def _describe(path: str, err: Exception) -> CheckpointLoadError:
    if isinstance(err, ScanRefusal):  # not code: a tensor, size or key torch would not check
        return UnsafeCheckpointError(f'cannot read {path}: {err}')
    cause = _unpickler_cause(err)
    operation = _refused_operation(cause)
    what = _refused_global(cause) if operation is None else None
    if what is not None or operation is not None:
        operation = operation or f'it pickles {what}, which is not allowed'
        return UnsafeCheckpointError(
            f'cannot read {path}: {operation} (greenmim_mm loads checkpoints weights-only with '
            f'inert classes only: {_INERT}); such a file can run code when loaded. '
            f'{_SEE_README}.')
    if isinstance(err, pickle.UnpicklingError):
        return UnsafeCheckpointError(
            f'cannot read {path}: its pickle data is refused by weights-only loading ({cause}); '
            f'it is malformed or uses pickle features that can run code. {_SEE_README}.')
    return CheckpointLoadError(f'cannot read {path} as a torch checkpoint: '
                               f'{type(err).__name__}: {cause}')


def _allowed_names() -> dict:
    """Every global name the weights-only unpickler resolves under :func:`safe_globals`."""
    with torch.serialization.safe_globals(safe_globals()):
        return {**torch._weights_only_unpickler._get_allowed_globals(),
                **torch._weights_only_unpickler._get_user_allowed_globals()}


def load_checkpoint_file(path: str, map_location: Any = None) -> Any:
    """Load the checkpoint at ``path`` weights-only with :func:`safe_globals`, rebuild and check
    its numpy values (:func:`greenmim_mm.checkpoint.numpy_values.restore_numpy`), drop its config text
    (:func:`drop_config_text`), then restore plain-format and legacy values
    (:func:`greenmim_mm.checkpoint.plain_format.from_plain`).

    Raises ``FileNotFoundError`` ('... can not be found', as mmengine's loader),
    :class:`UnsafeCheckpointError` for a refused global or numpy value,
    :class:`CheckpointLoadError` for an unreadable file.
    """
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    with open(path, 'rb') as file:  # scanned and loaded from one open file
        return _load(file, path, map_location)


def load_checkpoint_bytes(data: bytes, source: str, map_location: Any = None) -> Any:
    """:func:`load_checkpoint_file` for a checkpoint's bytes fetched from ``source`` (a URL
    named in messages)."""
    with io.BytesIO(data) as buffer:
        return _load(buffer, source, map_location)


def _load(file: Any, source: str, map_location: Any) -> Any:
    """Scan (:func:`greenmim_mm.checkpoint.scan.scan_checkpoint`), then load ``file`` weights-only
    and restore it within the file's :class:`~greenmim_mm.checkpoint.numpy_values.DecodeBudget`."""
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    try:
        scan_checkpoint(file, size, _allowed_names(), _scan_getattr)
        with torch.serialization.safe_globals(safe_globals()):
            checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling, zip and EOF errors all mean "not loadable"
        raise _describe(source, err) from None
    return _restored(source, checkpoint, DecodeBudget.for_file(size))


def _restored(source: str, checkpoint: Any, budget: DecodeBudget) -> Any:
    try:
        checkpoint = restore_numpy(checkpoint, budget=budget)
    except UnsafeNumpyValue as err:
        raise UnsafeCheckpointError(
            f'cannot read {source}: {err}; such a value can crash the process or corrupt memory '
            f'when read (allowed: {_INERT}). {_SEE_README}.') from None
    except UnsafeValue as err:  # a tensor outside its storage, past the budget
        raise UnsafeCheckpointError(f'cannot read {source}: {err}') from None
    except RecursionError:
        raise CheckpointLoadError(f'cannot read {source}: its data is nested too deeply') from None
    except Exception as err:  # malformed records (bad shapes, sizes, keys): one clear error
        raise CheckpointLoadError(f'cannot read {source}: malformed numpy values: '
                                  f'{type(err).__name__}: {err}') from None
    try:
        checkpoint = from_plain(checkpoint, budget=budget)
    except UnsafeNumpyValue as err:
        raise UnsafeCheckpointError(f'cannot read {source}: {err}. {_SEE_README}.') from None
    except UnsafeValue as err:
        raise UnsafeCheckpointError(f'cannot read {source}: {err}') from None
    except RecursionError:
        raise CheckpointLoadError(f'cannot read {source}: its data is nested too deeply') from None
    except Exception as err:
        raise CheckpointLoadError(f'cannot read {source}: malformed greenmim_mm/mmengine values: '
                                  f'{type(err).__name__}: {err}') from None
    # After restoring: a tagged value (e.g. a numpy str_) must not slip through as config text.
    drop_config_text(checkpoint, source)
    return checkpoint


def drop_config_text(checkpoint: Any, source: str) -> list:
    """Remove the config text (str) mmengine would execute from a loaded checkpoint, in place:
    ``meta['config']`` (``Runner.resume`` runs it; logged as a warning), ``meta['cfg']`` and
    ``message_hub['runtime_info']['cfg']`` (mmengine's inferencers run them when built without
    a config; every mmengine checkpoint holds them, so only logged at debug level). A resumed
    run keeps its own config text in the message hub. Returns the locations removed."""
    from mmengine.logging import print_log
    dropped = []
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    hub = checkpoint.get('message_hub') if isinstance(checkpoint, dict) else None
    info = hub.get('runtime_info') if isinstance(hub, dict) else None
    for where, holder, key in (("meta['config']", meta, 'config'), ("meta['cfg']", meta, 'cfg'),
                               ("message_hub['runtime_info']['cfg']", info, 'cfg')):
        # after restoring, so numpy str_/bytes_ (str/bytes subclasses) count as text too
        if isinstance(holder, dict) and isinstance(holder.get(key), (str, bytes)):
            del holder[key]
            dropped.append(where)
    resumed = hub.get('resumed_keys') if isinstance(hub, dict) else None
    if "message_hub['runtime_info']['cfg']" in dropped and isinstance(resumed, dict):
        resumed.pop('cfg', None)
    if "meta['config']" in dropped:
        print_log(f"ignoring meta['config'] in {source}: config text in a checkpoint is Python "
                  'code (mmengine would execute it on resume); greenmim_mm never runs code from '
                  'a checkpoint', logger='current', level=logging.WARNING)
    if dropped:
        print_log(f'not loaded from {source} (config text, executable): {", ".join(dropped)}',
                  logger='current', level=logging.DEBUG)
    return dropped


def load_url_safely(url: str, model_dir: Optional[str] = None, map_location: Any = None,
                    progress: bool = True, check_hash: bool = False,
                    file_name: Optional[str] = None) -> Any:
    """mmengine's ``load_url``: torch.hub's download cache (``<hub dir>/checkpoints``, the file
    name from the URL or ``file_name``, the hash prefix checked when ``check_hash``), the file then
    loaded by :func:`load_checkpoint_file` (torch.hub's own default is ``weights_only=False``, and
    its weights-only path skips the scan and the budget)."""
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, file_name or osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        found = torch.hub.HASH_REGEX.search(osp.basename(cached)) if check_hash else None
        torch.hub.download_url_to_file(url, cached, found.group(1) if found else None,
                                       progress=progress)
    with open(cached, 'rb') as file:
        return _load(file, url, map_location)


def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """:func:`load_checkpoint_file` under the name mmengine logs ('Loads checkpoint by
    local_weights_only backend': it strips the ``load_from_`` prefix)."""
    return load_checkpoint_file(filename, map_location)


def load_from_ceph_weights_only(filename: str, map_location: Any = None,
                                backend: str = 'petrel') -> Any:
    """mmengine's ``load_from_ceph`` (``s3://``, ``petrel://``, ``<cluster>:s3://``): the bytes
    from mmengine's file backend, loaded like :func:`load_checkpoint_file`."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    file_backend = mmengine_checkpoint.get_file_backend(filename,
                                                        backend_args={'backend': backend})
    return load_checkpoint_bytes(file_backend.get(filename), filename, map_location)


def load_from_pavi_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine's ``load_from_pavi`` (``pavi://``): download with pavi's model cloud into a
    temporary directory, then :func:`load_checkpoint_file`."""
    import tempfile
    if not filename.startswith('pavi://'):
        raise ValueError(f'Expected filename startswith `pavi://`, but get {filename}')
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, osp.basename(str(model.name)))
        model.download(downloaded)
        with open(downloaded, 'rb') as f:
            return load_checkpoint_bytes(f.read(), filename, map_location)


def load_from_openmmlab_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine's ``load_from_openmmlab`` (``open-mmlab://``, ``openmmlab://``): a model name
    resolved to a URL (downloaded through :func:`load_url_safely`) or to a file under
    ``$MMENGINE_HOME`` (:func:`load_checkpoint_file`)."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    name = filename[len(prefix):]
    name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    url = mmengine_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return mmengine_checkpoint.load_from_http(url, map_location=map_location)
    return load_checkpoint_file(osp.join(mmengine_checkpoint._get_mmengine_home(), url),
                                map_location)


# mmengine 0.10.7's schemes: ours replace the ones that call torch.load; the others reach a file
# only through load_from_http -> load_url, which register_with_mmengine replaces
_ROUTED = {'': load_from_local_weights_only,
           r'(\S+\:)?s3://': load_from_ceph_weights_only,
           r'(\S+\:)?petrel://': load_from_ceph_weights_only,
           'pavi://': load_from_pavi_weights_only,
           'open-mmlab://': load_from_openmmlab_weights_only,
           'openmmlab://': load_from_openmmlab_weights_only}
_VIA_LOAD_URL = {'http://': 'load_from_http', 'https://': 'load_from_http',
                 'modelzoo://': 'load_from_torchvision', 'torchvision://': 'load_from_torchvision',
                 'mmcls://': 'load_from_mmcls'}


def _refuse_scheme(prefix: str):
    def refuse(filename, map_location=None, *args, **kwargs):
        raise CheckpointLoadError(
            f'cannot read {filename}: its scheme {prefix!r} loads files with a loader greenmim_mm '
            'cannot check (not weights-only); download the file and give its local path')
    refuse.__name__ = 'load_from_unchecked_scheme'
    return refuse


def register_with_mmengine() -> None:
    """Route every scheme of mmengine's ``CheckpointLoader`` through this module: the ones that
    call ``torch.load`` (:data:`_ROUTED`) are replaced, the URL download the others use
    (``load_url``) is replaced by :func:`load_url_safely`, and a scheme registered by anyone else
    is refused with a clear error. Idempotent."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    loader = mmengine_checkpoint.CheckpointLoader
    mmengine_checkpoint.load_url = load_url_safely
    for prefix, routed in _ROUTED.items():
        loader.register_scheme(prefixes=prefix, loader=routed, force=True)
    for prefix, current in list(loader._schemes.items()):
        safe = current in _ROUTED.values() or current.__name__ == 'load_from_unchecked_scheme' \
            or (_VIA_LOAD_URL.get(prefix) == current.__name__
                and current.__module__ == mmengine_checkpoint.__name__)
        if not safe:
            loader.register_scheme(prefixes=prefix, loader=_refuse_scheme(prefix), force=True)
