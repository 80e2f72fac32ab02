"""``Trainer``: detectron2's ``DefaultTrainer`` for models with a greenmim_mm backbone."""
import os

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from .checkpoint import GreenDetectionCheckpointer
from .optim import build_optimizer


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` (``cfg`` from :func:`greenmim_mm.detectron2.get_cfg`) with

    * the optimizer of ``cfg.SOLVER.OPTIMIZER``: ``'ADAMW'`` (:func:`~.optim.build_optimizer`:
      no weight decay on norms / position tables, optional layer decay) or ``'SGD'``
      (detectron2's);
    * ``COCOEvaluator`` with pycocotools' evaluation (``use_fast_impl=False``: the fast one is C++);
    * :class:`GreenDetectionCheckpointer` for loading (``MODEL.WEIGHTS``: a converted greenmim_mm
      backbone or a detectron2 checkpoint; every backbone weight checked). Saving is
      ``DetectionCheckpointer``'s.
    """

    def __init__(self, cfg):
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # detectron2's default_setup does it otherwise
        super().__init__(cfg)
        saver = self.checkpointer
        self.checkpointer = GreenDetectionCheckpointer(
            saver.model, saver.save_dir, save_to_disk=saver.save_to_disk, **saver.checkpointables)

    def train(self):
        """``DefaultTrainer.train``; returns the last evaluation's results (``{task: {metric:
        value}}``, or None without evaluation): detectron2 returns them only with
        ``TEST.EXPECTED_RESULTS``."""
        results = super().train()
        return results if results is not None else getattr(self, '_last_eval_results', None)

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == 'ADAMW':
            return build_optimizer(cfg, model)
        if name == 'SGD':
            return super().build_optimizer(cfg, model)
        raise ValueError(f'cfg.SOLVER.OPTIMIZER must be ADAMW or SGD; got {cfg.SOLVER.OPTIMIZER!r}')

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, 'inference')
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)
