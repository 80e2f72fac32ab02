"""Image loading that skips unreadable files instead of crashing the run."""
from typing import Optional

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log

from greenmim_mm.registry import TRANSFORMS


def unreadable_reason(error: Exception) -> str:
    """A one-line reason for a failed load from mmcv's exception."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else ''
    if isinstance(error, AssertionError) and 'failed to load image' in text:
        return 'the decoder cannot read it (truncated, corrupt or not an image)'
    if '!buf.empty()' in text:  # OpenCV's imdecode on 0 bytes
        return 'empty file (0 bytes)'
    return f'{type(error).__name__}: {text}'


@TRANSFORMS.register_module()
class LoadImageFromFileOrSkip(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` (same arguments and output) that returns None for an
    unreadable file instead of raising, logging a warning that names the file and the reason.

    Unreadable: a missing file, zero bytes, bytes the decoder rejects (a text file named
    ``.jpg``; with OpenCV >= 4.x and Pillow also a truncated JPEG). A None result makes a dataset
    with ``SeededSamplesMixin`` replace the sample deterministically and report it to
    ``SkippedSamplesHook``, which counts skipped files per epoch and stops the run past a limit.
    """

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except Exception as e:  # noqa: BLE001 -- any failure to read or decode is a bad file
            print_log(f'Skipping unreadable image {results["img_path"]}: '
                      f'{unreadable_reason(e)}', logger='current', level=30)
            return None
