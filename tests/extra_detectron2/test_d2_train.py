"""End to end: detectron2's DefaultTrainer (greenmim_mm's Trainer) trains the nano Mask R-CNN with
our backbone on the generated COCO data, evaluates it with COCOEvaluator and reloads its
checkpoint."""
import math
import os.path as osp

import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import NANO_LAZY, NANO_YAML, TWINS_NANO_YAML, load_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, HookBase  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from greenmim_mm.detectron2 import (GreenDetectionCheckpointer, Trainer,  # noqa: E402
                                     register_demo_coco)

ITERS = 3


class Probe(HookBase):
    """Per step: the total loss and, per backbone parameter, whether its gradient exists and is
    finite, and whether it is non-zero (drop path may zero a branch for a whole small batch)."""

    def __init__(self):
        self.losses, self.finite, self.nonzero = [], [], []

    def after_step(self):
        self.losses.append(self.trainer.storage.history('total_loss').latest())
        body = self.trainer.model.backbone.bottom_up.body
        params = list(body.named_parameters())
        self.finite.append({n: p.grad is not None and bool(torch.isfinite(p.grad).all())
                            for n, p in params})
        self.nonzero.append({n: p.grad is not None and bool(p.grad.abs().sum() > 0)
                             for n, p in params})


@pytest.mark.parametrize('yaml_path', [NANO_YAML, TWINS_NANO_YAML], ids=['swin', 'twins'])
def test_default_trainer_trains_evaluates_and_reloads(demo_data_factory, tmp_path, capsys,
                                                     yaml_path):
    root = demo_data_factory('d2_demo', train_per_class=1, val_per_class=1, det_train=4, det_val=2)
    register_demo_coco(osp.join(root, 'coco'))
    cfg = load_cfg(yaml_path, 'SOLVER.MAX_ITER', ITERS, 'SOLVER.IMS_PER_BATCH', 2,
                   'SOLVER.WARMUP_ITERS', 1, 'SOLVER.CHECKPOINT_PERIOD', ITERS,
                   'OUTPUT_DIR', str(tmp_path / 'out'))
    seed_all_rng(0)  # model init, data order (TrainingSampler draws its seed), drop path
    trainer = Trainer(cfg)
    assert isinstance(trainer, DefaultTrainer)
    probe = Probe()
    trainer.register_hooks([probe])
    trainer.resume_or_load(resume=False)
    results = trainer.train()

    assert len(probe.losses) == ITERS and all(math.isfinite(x) for x in probe.losses)
    for step, finite in enumerate(probe.finite):
        assert all(finite.values()), (step, [n for n, ok in finite.items() if not ok])
    never = [n for n in probe.nonzero[0] if not any(step[n] for step in probe.nonzero)]
    assert not never, f'backbone parameters without a gradient: {never}'
    assert set(results) == {'bbox', 'segm'}
    for task in ('bbox', 'segm'):
        assert {'AP', 'AP50', 'AP75'} <= set(results[task])
    with capsys.disabled():
        print(f'\n[d2 demo, {osp.basename(yaml_path)}] losses: '
              f'{[round(x, 4) for x in probe.losses]}')
        print(f'[d2 demo] COCOEvaluator: {dict(results)}')

    final = osp.join(cfg.OUTPUT_DIR, 'model_final.pth')
    assert osp.isfile(final)
    reloaded = Trainer.build_model(cfg)
    GreenDetectionCheckpointer(reloaded).load(final)
    trained = trainer.model.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_demo_lazyconfig_trains_with_detectrons_own_lazy_trainer(demo_data_factory, tmp_path):
    """The README's LazyConfig command: detectron2's tools/lazyconfig_train_net.py (installed by
    the extra as the top-level ``tools`` package) trains the demo LazyConfig, evaluates with
    COCOEvaluator and writes model_final.pth."""
    import subprocess
    import sys
    root = demo_data_factory('d2_lazy', train_per_class=1, val_per_class=1, det_train=4, det_val=2)
    out = tmp_path / 'out'
    run = subprocess.run(
        [sys.executable, '-m', 'tools.lazyconfig_train_net', '--config-file', NANO_LAZY,
         'train.max_iter=2', f'train.output_dir={out}', 'dataloader.train.total_batch_size=2',
         f'dataloader.train.dataset.coco_root={osp.join(root, "coco")}'],
        capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert 'Evaluation results for bbox' in log and 'Evaluation results for segm' in log
    assert (out / 'model_final.pth').is_file()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f'echo PWNED > {self.marker}', ))


@pytest.mark.parametrize('eval_only', [False, True], ids=['train', 'eval-only'])
def test_lazyconfig_route_never_unpickles_an_init_checkpoint(demo_data_factory, tmp_path,
                                                            eval_only):
    """Issue 19.2: the README's LazyConfig command with ``train.init_checkpoint=evil.pkl``
    (detectron2's DetectionCheckpointer would ``pickle.load`` it: the marker file appeared,
    rc 0) is refused with one error line, before any training, and the payload never runs."""
    import pickle
    import subprocess
    import sys
    root = demo_data_factory('d2_evil', train_per_class=1, val_per_class=1, det_train=2,
                             det_val=1)
    marker = tmp_path / 'marker'
    evil = tmp_path / 'evil.pkl'
    evil.write_bytes(pickle.dumps({'model': _RunsCode(str(marker)), '__author__': 'x'}))
    out = tmp_path / 'out'
    run = subprocess.run(
        [sys.executable, '-m', 'tools.lazyconfig_train_net', '--config-file', NANO_LAZY,
         *(['--eval-only'] if eval_only else []), f'train.init_checkpoint={evil}',
         'train.max_iter=2', f'train.output_dir={out}', 'dataloader.train.total_batch_size=2',
         f'dataloader.train.dataset.coco_root={osp.join(root, "coco")}'],
        capture_output=True, text=True, timeout=900)
    assert not marker.exists(), 'the pickled payload ran'
    assert run.returncode == 1, run.stderr[-3000:]
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last == (f'lazyconfig_train_net.py: error: {evil}: detectron2 model-zoo pickles '
                    '(.pkl) are not loaded here; give a converted greenmim_mm backbone or a '
                    'detectron2 .pth checkpoint')
    assert not (out / 'model_final.pth').exists()


def test_train_tool_logs_greenmim_messages_to_the_output_dir(demo_data_factory, tmp_path,
                                                            monkeypatch):
    """``norm0``-``norm2`` missing from a converted checkpoint are reported by greenmim_mm's
    logger: the train tool now sends it to the console and OUTPUT_DIR/log.txt, as detectron2's."""
    import importlib.util
    import logging
    from d2_utils import REPO
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))  # as for a script: tools/_light.py
    spec = importlib.util.spec_from_file_location(
        'train_detectron2', osp.join(REPO, 'tools', 'train_detectron2.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = demo_data_factory('d2_log', train_per_class=1, val_per_class=1, det_train=2, det_val=1)
    args = tool.parse_args(['--config-file', NANO_YAML, '--demo-root', osp.join(root, 'coco'),
                            'OUTPUT_DIR', str(tmp_path)])
    tool.setup(args)
    logging.getLogger('greenmim_mm.detectron2.checkpoint').info('marker 1234')
    for handler in logging.getLogger('greenmim_mm').handlers:
        handler.flush()
    assert 'marker 1234' in (tmp_path / 'log.txt').read_text()


def test_train_tool_known_failures_are_one_error_line(demo_data_factory, tmp_path, monkeypatch):
    """Issue 19.7: tools/train_detectron2.py ends each known failure with one line (a
    ``SystemExit`` message: exit status 1, no traceback) naming the problem."""
    import importlib.util
    import pickle
    import re
    from d2_utils import REPO
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))  # as for a script: tools/_light.py
    spec = importlib.util.spec_from_file_location(
        'train_detectron2_errors', osp.join(REPO, 'tools', 'train_detectron2.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = osp.join(demo_data_factory('d2_err', train_per_class=1, val_per_class=1, det_train=1,
                                      det_val=1), 'coco')
    evil = tmp_path / 'evil.pkl'
    evil.write_bytes(pickle.dumps({'model': {}}))
    out = ['OUTPUT_DIR', str(tmp_path / 'out'), 'MODEL.DEVICE', 'cpu']
    cases = {
        'missing config': (['--config-file', str(tmp_path / 'nope.yaml')],
                           r"nope\.yaml: Config file '.*nope\.yaml' does not exist"),
        'unknown key': (['--config-file', NANO_YAML, 'FOO', '1'], r'Non-existent key: FOO'),
        'missing demo data': (['--config-file', NANO_YAML, '--demo-root', str(tmp_path / 'no')],
                              r'no/annotations/instances_train\.json not found'),
        'missing weights': (['--config-file', NANO_YAML, '--demo-root', root, '--eval-only',
                             *out, 'MODEL.WEIGHTS', str(tmp_path / 'nope.pth')],
                            r'MODEL\.WEIGHTS not found: .*nope\.pth'),
        'pickled weights': (['--config-file', NANO_YAML, '--demo-root', root, '--eval-only',
                             *out, 'MODEL.WEIGHTS', str(evil)],
                            r'evil\.pkl: detectron2 model-zoo pickles \(\.pkl\) are not loaded'),
    }
    for name, (argv, pattern) in cases.items():
        with pytest.raises(SystemExit) as exit_:
            tool.run(tool.parse_args(argv))
        message = exit_.value.code
        assert isinstance(message, str) and message.startswith('train_detectron2: error: '), \
            (name, message)
        assert '\n' not in message and re.search(pattern, message), (name, message)
