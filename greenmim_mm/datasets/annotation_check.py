"""Validation of mmpretrain annotation files (one ``<relative path>[ <label>]`` per line) when a
dataset is built, so a bad line fails at start-up with its line number instead of iterations
later."""
import os.path as osp
from typing import Optional

from mmengine.fileio import get_file_backend, list_from_file
from mmengine.fileio.backends import LocalBackend


def _is_int(text: str) -> bool:
    return text.lstrip('-').isdigit()


def check_annotation_file(ann_file: str, img_prefix: str, with_label: bool,
                          num_classes: Optional[int] = None, check_files: bool = True) -> int:
    """Validate ``ann_file`` as mmpretrain's ``CustomDataset`` reads it; returns the line count.

    Each line must be ``<path> <label>`` (``with_label``; label an integer in
    [0, num_classes) when ``num_classes`` is known) or ``<path>`` alone (label-free). With
    ``check_files`` (local files only) every ``img_prefix/<path>`` must be a file.

    Raises:
        ValueError: naming the file, the first offending line (1-based) and what is wrong:
            an empty line, a missing label or a label that is no integer / out of range, a line
            with a label given to a label-free dataset, a missing image file, or no lines.
    """
    lines = list_from_file(ann_file)
    local = isinstance(get_file_backend(img_prefix or '.', enable_singleton=True), LocalBackend)
    for number, line in enumerate(lines, 1):
        problem = _line_problem(line.strip(), img_prefix, with_label, num_classes,
                                check_files and local)
        if problem:
            raise ValueError(f'{ann_file}, line {number} ({line.strip()!r}): {problem}')
    if not lines:
        raise ValueError(f'{ann_file}: the annotation file lists no samples')
    return len(lines)


def _line_problem(line: str, img_prefix: str, with_label: bool, num_classes: Optional[int],
                  check_files: bool) -> Optional[str]:
    if not line:
        return 'empty line'
    if with_label:
        fields = line.rsplit(' ', 1)
        if len(fields) != 2 or not _is_int(fields[1]):
            return ('expected "<path> <integer label>" (with_label=True); '
                    f'got {len(fields)} field(s)')
        label = int(fields[1])
        if num_classes is not None and not 0 <= label < num_classes:
            return f'label {label} is outside [0, {num_classes}) ({num_classes} classes)'
        if label < 0:
            return f'label {label} is negative'
        path = fields[0]
    else:
        path = line
    if check_files and not osp.isfile(osp.join(img_prefix, path)):
        fields = line.rsplit(' ', 1)
        if not with_label and len(fields) == 2 and _is_int(fields[1]):
            return ('2 fields (a path and a label) but this dataset is label-free '
                    '(with_label=False) and takes one path per line; give it a list of paths '
                    '(or no ann_file to scan the folder)')
        return f'image file not found: {osp.join(img_prefix, path)}'
    return None
