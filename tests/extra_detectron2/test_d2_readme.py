"""The README's Detectron2 quick start, run as written: the Swin-B yaml merged into greenmim_mm's
``get_cfg()``, a ``tools/convert_checkpoint.py`` output as ``MODEL.WEIGHTS`` loaded into the
backbone, ``trainer.train()``. Only what a CPU test cannot afford is overridden between the
snippet's config lines and ``Trainer(cfg)``: the demo COCO data instead of COCO, 128-px inputs,
one image, one iteration, the CPU."""
import math
import os
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import REPO  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402

from greenmim_mm.converters import convert_file  # noqa: E402
from greenmim_mm.detectron2 import register_demo_coco  # noqa: E402

README = Path(REPO, 'README.md').read_text()
BUILD = 'trainer = Trainer(cfg)\n'
TRAIN = 'trainer.train()\n'
CPU_OVERRIDES = [
    'MODEL.DEVICE', 'cpu', 'MODEL.ROI_HEADS.NUM_CLASSES', 5,
    'DATASETS.TRAIN', ('greenmim_demo_train', ), 'DATASETS.TEST', (),
    'DATALOADER.NUM_WORKERS', 0, 'SOLVER.IMS_PER_BATCH', 1, 'SOLVER.MAX_ITER', 1,
    'SOLVER.WARMUP_ITERS', 1, 'INPUT.MIN_SIZE_TRAIN', (128, ), 'INPUT.MAX_SIZE_TRAIN', 128,
    'INPUT.MASK_FORMAT', 'polygon']


def readme_d2_snippet() -> str:
    blocks = re.findall(r'```python\n(.*?)```', README, re.S)
    (snippet, ) = [b for b in blocks if 'import greenmim_mm.detectron2' in b]
    return snippet


class LossProbe(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.history('total_loss').latest())


def backbone_body(model):
    return model.backbone.bottom_up.body


def test_readme_detectron2_snippet_loads_the_converted_weights_and_trains(
        demo_data_factory, tmp_path, monkeypatch):
    snippet = readme_d2_snippet()
    assert snippet.count(BUILD) == 1 and snippet.endswith(TRAIN), snippet
    configure, rest = snippet.split(BUILD)
    load = BUILD + rest[:-len(TRAIN)]
    assert "cfg.MODEL.WEIGHTS = 'backbone.pth'" in configure

    # the snippet's relative paths: the repository's configs/, backbone.pth in the working dir
    os.symlink(Path(REPO, 'configs'), tmp_path / 'configs')
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(configure, ns)  # imports, get_cfg(), merge_from_file(the Swin-B yaml), MODEL.WEIGHTS
    cfg = ns['cfg']
    assert cfg.MODEL.GREENSWIN.ARCH == 'base' and cfg.MODEL.WEIGHTS == 'backbone.pth'
    register_demo_coco(os.path.join(demo_data_factory('d2_readme', 1, 1, det_train=2,
                                                      det_val=1), 'coco'))
    cfg.merge_from_list(CPU_OVERRIDES + ['OUTPUT_DIR', str(tmp_path / 'out')])

    # "tools/convert_checkpoint.py output": a Swin-B pre-training checkpoint of ours (weights
    # unlike any initialisation), converted as the README's table says (--src greenmim_mm)
    torch.manual_seed(0)
    body = backbone_body(ns['Trainer'].build_model(cfg)).state_dict()
    pretrain = {f'backbone.{k}': v + torch.randn_like(v) if v.is_floating_point() else v
                for k, v in body.items()}
    torch.save({'state_dict': pretrain}, tmp_path / 'epoch_800.pth')
    convert_file(str(tmp_path / 'epoch_800.pth'), str(tmp_path / 'backbone.pth'), 'greenmim_mm')
    converted = torch.load(tmp_path / 'backbone.pth', weights_only=True)['state_dict']

    exec(load, ns)  # trainer = Trainer(cfg); trainer.resume_or_load(resume=False)
    trainer = ns['trainer']
    loaded = backbone_body(trainer.model).state_dict()
    params = [k for k, _ in backbone_body(trainer.model).named_parameters()]
    assert params and all(f'backbone.{k}' in converted for k in params)
    for key in params:
        assert torch.equal(loaded[key], converted[f'backbone.{key}']), key

    probe = LossProbe()
    trainer.register_hooks([probe])
    exec(TRAIN, ns)
    assert trainer.iter == cfg.SOLVER.MAX_ITER and len(probe.losses) == 1
    assert math.isfinite(probe.losses[0])
    assert (tmp_path / 'out' / 'model_final.pth').is_file()
