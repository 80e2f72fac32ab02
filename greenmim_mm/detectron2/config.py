"""greenmim_mm's detectron2 config keys (yacs): ``add_greenmim_config(cfg)`` before merging a yaml.

``MODEL.GREENSWIN`` holds ``GreenSwinTransformer``'s arguments (mmpretrain ``SwinTransformer``
names), ``MODEL.GREENTWINS`` ``GreenTwinsSVT``'s (mmpretrain ``SVT``), ``SOLVER.OPTIMIZER`` ...
the optimizer of :class:`greenmim_mm.detectron2.Trainer`.
"""
from detectron2.config import CfgNode as CN

NO_WEIGHT_DECAY_KEYS = ('norm', 'relative_position_bias_table', 'absolute_pos_embed')


def add_greenswin_config(cfg: CN) -> None:
    """``cfg.MODEL.GREENSWIN`` with the defaults of mmpretrain's ``SwinTransformer``."""
    cfg.MODEL.GREENSWIN = CN()
    c = cfg.MODEL.GREENSWIN
    c.ARCH = 'base'  # mmpretrain arch name, used when EMBED_DIM is 0
    c.EMBED_DIM = 0  # > 0: a custom arch of EMBED_DIM, DEPTHS, NUM_HEADS
    c.DEPTHS = []
    c.NUM_HEADS = []
    c.IMG_SIZE = 224  # only sizes the absolute position embedding (resized to any input)
    c.PATCH_SIZE = 4
    c.WINDOW_SIZE = 7
    c.DROP_RATE = 0.0
    c.DROP_PATH_RATE = 0.1
    c.USE_ABS_POS_EMBED = False
    c.PAD_SMALL_MAP = False  # True: pad maps smaller than a window, keep the shift
    c.WITH_CP = False  # activation checkpointing
    c.FROZEN_STAGES = -1  # mmpretrain's: -1 none; k >= 0 patch embedding + stages 0..k + norms
    c.OUT_FEATURES = ['res2', 'res3', 'res4', 'res5']
    c.SIZE_DIVISIBILITY = 0  # 0: the largest output stride (32); e.g. 224 = 32 x window 7


def add_greentwins_config(cfg: CN) -> None:
    """``cfg.MODEL.GREENTWINS``: ``GreenTwinsSVT`` / mmpretrain ``SVT`` arguments, defaults as the
    mmdet Twins configs (``qkv_bias``, every stage normalised). mmpretrain's SVT has no
    ``frozen_stages`` (and detectron2's ``MODEL.BACKBONE.FREEZE_AT`` is not used), so there is
    no frozen-stages key."""
    cfg.MODEL.GREENTWINS = CN()
    c = cfg.MODEL.GREENTWINS
    c.ARCH = 'large'  # mmpretrain SVT arch ('small', 'base', 'large') or 'nano' (the demo size)
    c.QKV_BIAS = True
    c.NORM_AFTER_STAGE = True  # norm_after_stage{i} on every output
    c.DROP_RATE = 0.0
    c.ATTN_DROP_RATE = 0.0
    c.DROP_PATH_RATE = 0.1
    c.OUT_FEATURES = ['res2', 'res3', 'res4', 'res5']
    c.SIZE_DIVISIBILITY = 0  # 0: the largest output stride (32); e.g. 224 = 32 x window 7


def add_solver_config(cfg: CN) -> None:
    """AdamW with optional layer-wise lr decay for :class:`greenmim_mm.detectron2.Trainer`."""
    cfg.SOLVER.OPTIMIZER = 'ADAMW'  # or 'SGD': detectron2's own build_optimizer
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.LAYER_DECAY_RATE = 1.0  # < 1: lr x rate ** (num_layers - 1 - layer_id)
    cfg.SOLVER.NO_WEIGHT_DECAY_KEYS = NO_WEIGHT_DECAY_KEYS  # substrings of parameter names
    # mmengine's paramwise custom_keys, e.g. {'bottom_up': {'lr_mult': 0.1}}: lr x lr_mult on
    # top of the layer rate, weight decay x decay_mult; overrides NO_WEIGHT_DECAY_KEYS.
    cfg.SOLVER.CUSTOM_KEYS = CN(new_allowed=True)


def add_greenmim_config(cfg: CN) -> CN:
    """Add every greenmim_mm key to a detectron2 config (``get_cfg()``); returns ``cfg``."""
    add_greenswin_config(cfg)
    add_greentwins_config(cfg)
    add_solver_config(cfg)
    return cfg


def get_cfg() -> CN:
    """detectron2's default config plus greenmim_mm's keys."""
    from detectron2.config import get_cfg as d2_get_cfg
    return add_greenmim_config(d2_get_cfg())
