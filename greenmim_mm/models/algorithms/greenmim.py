"""GreenMIM: masked image modeling with a sparse hierarchical (Swin) encoder.

One random mask of 32-px units per device batch; the encoder computes only the visible tokens
(``GreenSwinTransformer(x, mask=mask)``), a light decoder predicts every unit's pixels, and the
loss counts the masked units only.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import get_rank
from mmpretrain.models.selfsup import BaseSelfSupervisor

from greenmim_mm.models.necks.grid_decoder import (decode_cells, masked_cell_index,
                                                   visible_cell_index)
from greenmim_mm.ops.masking import (check_mask_ratio, num_visible_units, random_unit_mask,
                                     unit_grid)
from greenmim_mm.registry import MODELS

from .step_plan import PlanPrefetcher, pack_plan


def mask_generator_seed(base_seed: int, rank: int, step: int) -> int:
    """A 64-bit generator seed, a deterministic hash of (base seed, rank, step) (NumPy's
    ``SeedSequence``: well mixed, so neighbouring ranks/steps give unrelated streams)."""
    entropy = [int(base_seed) % 2**64, int(rank), int(step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def draw_unit_mask(grid_hw: Sequence[int], ratio: float, base_seed: int, rank: int,
                   step: int) -> torch.Tensor:
    """The mask of (base seed, rank, step): CPU bool (Hu, Wu), True = masked."""
    gen = torch.Generator().manual_seed(mask_generator_seed(base_seed, rank, step))
    return random_unit_mask(grid_hw, ratio, gen)


@MODELS.register_module()
class GreenMIM(BaseSelfSupervisor):
    """GreenMIM pre-training (Huang et al., NeurIPS 2022) with a bug-fixed decoder placement.

    Args:
        backbone (dict): a ``GreenSwinTransformer`` (its last out index feeds the decoder).
        neck (dict): the decoder, e.g. ``MAEUnitDecoder`` or ``LinearUnitDecoder``.
        head (dict): the loss, ``UnitReconstructionHead``.
        mask_ratio (float): fraction of units masked, in (0, 1) (MAE's rule: keep
            max(1, floor(L * (1 - ratio))) units); a ratio that leaves no unit masked on the
            backbone's ``img_size`` grid (e.g. 0) is a ValueError at build time: the loss is
            over masked units only.
        mask_seed (int, optional): base seed of the masks. None (default): ``torch.initial_seed()``
            read at the first ``loss`` call, i.e. the seed mmengine's ``randomness`` set
            (including the seed it restores from a checkpoint on resume, and the per-rank seed
            with ``diff_rank_seed``).
        compile (bool or dict): ``torch.compile`` the model step (encoder, decoder, loss; the
            backward through AOT autograd) with these options (True: defaults). The host side
            of the step (mask, geometry, decoder indices: ``plan_step``) stays outside the graph
            and every shape is static per (mask ratio, image size), so it compiles once. The
            host side is also excluded when mmengine's runner-level ``compile=True`` compiles
            ``train_step``. Default False.
        data_preprocessor, init_cfg: as ``BaseSelfSupervisor``.

    The decoder reads only the last stage, so the backbone's ``out_indices`` must be exactly
    (last stage,): other out norms would get no gradient, which DDP refuses. ValueError otherwise.

    Masks: ``loss`` draws one mask per call (shared by the device batch) from a generator seeded
    by a hash of (base seed, rank, step). ``step`` counts ``loss`` calls and is kept in the
    persistent buffer ``mask_step`` (int64, in the state dict), so resuming from a checkpoint
    draws exactly the masks an uninterrupted run would; ranks draw different masks. The global
    torch RNG is neither used nor advanced.

    The step's plan (mask, backbone geometry, decoder cell indices, loss weights; ``build_plan``)
    is a pure function of (seed, rank, step, image size, device); with ``prefetch_plan`` (default
    True) the plan of the next step is built in a background thread while the current one runs,
    and every plan reaches the device in one non-blocking copy of one (pinned) buffer
    (``step_plan``). The masks and resume are the same either way. A fork (DataLoader workers)
    waits for a build in flight; the child starts without the parent's prefetch.
    """

    def __init__(self, backbone: dict, neck: dict, head: dict, mask_ratio: float = 0.75,
                 mask_seed: Optional[int] = None, pretrained: Optional[str] = None,
                 data_preprocessor: Optional[Union[dict, torch.nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None, prefetch_plan: bool = True,
                 compile: Union[bool, dict] = False):
        self.mask_ratio = check_mask_ratio(mask_ratio)
        # Build through our registry (mmpretrain's base class would use mmpretrain's, which
        # does not know our components unless the default scope is greenmim_mm).
        backbone, neck, head = (_build(c) for c in (backbone, neck, head))
        check_greenmim_backbone(backbone, neck, self.mask_ratio)
        if isinstance(data_preprocessor, dict):
            data_preprocessor = _build(dict(dict(type='SelfSupDataPreprocessor'),
                                            **data_preprocessor))
        super().__init__(backbone=backbone, neck=neck, head=head, pretrained=pretrained,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.base_seed = None if mask_seed is None else int(mask_seed)
        self.register_buffer('mask_step', torch.zeros((), dtype=torch.int64), persistent=True)
        self._step = 0  # host mirror of ``mask_step``: no device sync to read it
        self.prefetch_plan = bool(prefetch_plan)
        self._prefetcher = PlanPrefetcher()
        self.compile_options = check_compile_options(compile)
        self._compiled = None  # the compiled model step, built at the first loss call

    # ------------------------------------------------------------------ mask bookkeeping
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step = int(self.mask_step)

    @property
    def unit(self) -> int:
        """Mask-unit side in pixels (the backbone's last-stage stride, 32 for Swin)."""
        return int(self.backbone.mask_unit)

    def next_mask(self, img_hw: Sequence[int]) -> torch.Tensor:
        """The mask of the current step for this rank (CPU bool (Hu, Wu)); advances the step."""
        if self.base_seed is None:
            self.base_seed = int(torch.initial_seed())
        mask = self.draw_step_mask(tuple(img_hw), self.base_seed, get_rank(), self._step)
        self._advance()
        return mask

    def _advance(self) -> None:
        self._step += 1
        self.mask_step.fill_(self._step)

    def draw_step_mask(self, img_hw: Tuple[int, int], base_seed: int, rank: int,
                       step: int) -> torch.Tensor:
        """The mask of (seed, rank, step) for images of ``img_hw`` (CPU bool (Hu, Wu));
        ValueError when it masks no unit."""
        mask = draw_unit_mask(unit_grid(img_hw, self.unit), self.mask_ratio, base_seed, rank,
                              step)
        if not bool(mask.any()):
            raise ValueError(f'mask_ratio={self.mask_ratio} masks no unit of the '
                             f'{tuple(mask.shape)} unit grid of a {tuple(img_hw)} input')
        return mask

    # ------------------------------------------------------------------ the step's plan
    def plan_shape(self, img: torch.Tensor) -> tuple:
        """What of the batch the plan depends on: the image size (H, W)."""
        return tuple(int(s) for s in img.shape[-2:])

    def plan_tensors(self, mask: torch.Tensor, shape: tuple, device: torch.device) -> dict:
        """Host tensors of a step's plan: the backbone geometry and the decoder's cells."""
        return dict(geometry=self.backbone.sparse_geometry(mask, shape, device),
                    cells=cell_plan(mask))

    def build_plan(self, key: tuple):
        """The packed plan (``step_plan.PackedPlan``) of ``key`` = (step, plan_shape, device,
        training, base seed, rank): a pure function of the key (run in the prefetch thread)."""
        step, shape, device, _, seed, rank = key
        mask = self.draw_step_mask(shape, seed, rank, step)
        return pack_plan(dict(mask=mask, **self.plan_tensors(mask, shape, device)), device)

    def take_plan(self, img: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """This step's (host mask, plan on ``img``'s device); advances the step and, with
        ``prefetch_plan``, starts building the next step's plan."""
        mask, plan, next_key = self._take_plan(img)
        self._prefetch(next_key)
        return mask, plan

    def _take_plan(self, img: torch.Tensor) -> Tuple[torch.Tensor, dict, Optional[tuple]]:
        """:meth:`take_plan` without starting the prefetch: (host mask, device plan, the key of
        the next step's plan or None without ``prefetch_plan``)."""
        if self.base_seed is None:
            self.base_seed = int(torch.initial_seed())
        key = (self._step, self.plan_shape(img), img.device, self.training, self.base_seed,
               get_rank())
        packed = self._prefetcher.take(key, self.build_plan)
        self._advance()
        next_key = (key[0] + 1, ) + key[1:] if self.prefetch_plan else None
        return packed.host['mask'], packed.to(img.device), next_key

    def _prefetch(self, next_key: Optional[tuple]) -> None:
        """Start building the plan of ``next_key`` in the background (None: nothing)."""
        if next_key is not None:
            self._prefetcher.start(next_key, self.build_plan)

    # ------------------------------------------------------------------ forward paths
    def extract_feat(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Dense backbone features: tuple of (B, C_i, H_i, W_i)."""
        return self.backbone(inputs, mask=None)

    def forward_masked(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """img (B, C, H, W), mask (Hu, Wu) -> predictions (B, Hu*Wu, unit²·C)."""
        latent = self.backbone(img, mask=mask)[-1]  # (B, N_vis, C): visible units, raster order
        return self.neck(latent, mask)

    def loss(self, inputs: Union[torch.Tensor, List[torch.Tensor]],
             data_samples: Optional[list] = None, **kwargs) -> Dict[str, torch.Tensor]:
        """inputs: normalised images (B, C, H, W) (or a one-view list) -> dict(loss=scalar).

        The decoder predicts the masked units only (``decode_cells``), the only ones the loss
        reads: the same loss as predicting every unit (tested), for less decoder work."""
        img = _single_view(inputs)
        mask, plan = self.plan_step(img)
        return dict(loss=self.model_step(img, mask, plan['geometry'], plan['cells']))

    @property
    def model_step(self):
        """``masked_loss``, compiled when ``compile`` was given (once, on first use)."""
        if self.compile_options is False:
            return self.masked_loss
        if self._compiled is None:
            options = {} if self.compile_options is True else self.compile_options
            self._compiled = torch.compile(self.masked_loss, **options)
        return self._compiled

    @torch.compiler.disable
    def plan_step(self, img: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """The host side of a step, never traced by ``torch.compile``: :meth:`take_plan` (the
        step's host mask and its plan on ``img``'s device, prefetched). Also fills the decoder's
        position-embedding cache for the grid here, so a compiled step never sees the cache
        change."""
        mask, plan, next_key = self._take_plan(img)
        if hasattr(self.neck, 'pos_embed'):
            self.neck.pos_embed(tuple(mask.shape), torch.empty(0, device=img.device))
        self._prefetch(next_key)  # last: the build does not hold up this thread's host work
        return mask, plan

    def masked_loss(self, img: torch.Tensor, mask: torch.Tensor, geometry,
                    cells: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The model step on the plan of :meth:`plan_step` (one graph under
        ``torch.compile``): sparse encoder, decoder at the masked cells, scalar loss."""
        latent = self.backbone(img, mask=mask, geometry=geometry)[-1]
        return masked_cell_loss(self.neck, self.head, latent, img, mask, cells)

    @torch.no_grad()
    def reconstruct(self, inputs: Union[torch.Tensor, List[torch.Tensor]],
                    mask: Optional[torch.Tensor] = None,
                    seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """For visualisation: (reconstruction (B, C, H, W), mask (Hu, Wu)).

        ``inputs`` are normalised images; the reconstruction is in the same normalised space
        (norm-pix predictions de-standardised with the original units' mean/std), predicted
        units everywhere (paste visible units from the input as needed). Without ``mask`` one is
        drawn from ``seed`` (the training step counter is left alone).
        """
        img = _single_view(inputs)
        if mask is None:
            mask = draw_unit_mask(unit_grid(img.shape[-2:], self.unit), self.mask_ratio,
                                  seed, 0, 0)
        pred = self.forward_masked(img, mask)
        return self.head.to_image(pred, img), mask


def cell_plan(mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Host tensors a masked-cell loss needs for a (H, W) bool mask: ``cells`` (masked cells'
    raster indices), ``visible`` (visible cells'), ``weight`` (the mask itself)."""
    return dict(cells=masked_cell_index(mask), visible=visible_cell_index(mask), weight=mask)


def masked_cell_loss(neck: torch.nn.Module, head: torch.nn.Module, latent: torch.Tensor,
                     img: torch.Tensor, mask: torch.Tensor,
                     plan: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """One decoder's loss on the masked cells of its grid: latent (B, N_vis, C) of the visible
    cells of ``mask`` (H, W) -> scalar ``head.loss`` of ``neck``'s predictions at the masked cells
    only (equal to the loss of its predictions on the whole grid, whose visible cells weigh 0).
    ``plan``: :func:`cell_plan` of ``mask`` already on the latent's device (else built here and
    copied non-blocking)."""
    if plan is None:
        plan = {k: v.to(latent.device, non_blocking=True) for k, v in cell_plan(mask).items()}
    cells = plan['cells']
    pred = decode_cells(neck, latent, mask, cells, plan['visible'])
    return head.loss(pred, img, plan['weight'], cells)


class ModelConfigError(ValueError):
    """A model config that builds but cannot train (a decoder narrower or wider than the
    backbone output it reads, wrong ``out_indices``, ...), found at build time; the message names
    the config key and the fix. ``tools/train.py`` / ``tools/test.py`` print it as one line."""


def check_compile_options(options: Union[bool, dict, None]) -> Union[bool, dict]:
    """``compile`` as False, True or a dict of ``torch.compile`` options; ValueError else."""
    if options is None:
        return False
    if not isinstance(options, (bool, dict)):
        raise ValueError(f'compile must be a bool or a dict of torch.compile options; got '
                         f'{options!r}')
    return options


def check_greenmim_backbone(backbone: torch.nn.Module, neck: torch.nn.Module,
                            mask_ratio: float) -> None:
    """Build-time checks (:class:`ModelConfigError`, a ValueError): the backbone has a sparse
    path (``sparse_unsupported``); a single decoder (not a list, as LocalMIM's) reads only the
    last stage, so ``out_indices`` must be (last stage,), and its ``in_channels`` must be that
    output's width (:func:`check_decoder_widths`); on a sparse Swin-like backbone
    (``mask_unit``, ``patch_stride``, ``patch_resolution``), ``mask_ratio`` must mask at least one
    unit of the unit grid of its ``img_size``."""
    reason = getattr(backbone, 'sparse_unsupported', None)
    if reason:
        raise ModelConfigError(f'pre-training runs the sparse path of {type(backbone).__name__}, '
                               f'which this configuration does not have: {reason}')
    stages = getattr(backbone, 'stages', None)
    if stages is not None and not isinstance(neck, (torch.nn.ModuleList, list, tuple)):
        last = len(stages) - 1
        if tuple(backbone.out_indices) != (last, ):
            raise ModelConfigError(
                f'GreenMIM uses only the last stage of the backbone, but out_indices='
                f'{tuple(backbone.out_indices)}: the other out norms would get no gradient (DDP '
                f'fails on them). Set model.backbone.out_indices=({last}, ).')
    if not isinstance(neck, (torch.nn.ModuleList, list, tuple)):
        check_decoder_widths(backbone, [neck], ['model.neck'], outputs=[-1])
    if not all(hasattr(backbone, a) for a in ('mask_unit', 'patch_stride', 'patch_resolution')):
        return
    per_unit = backbone.mask_unit // backbone.patch_stride
    grid = tuple(int(r) // per_unit for r in backbone.patch_resolution)
    units = grid[0] * grid[1]
    if num_visible_units(units, mask_ratio) >= units:
        raise ModelConfigError(
            f'mask_ratio={mask_ratio} masks no unit of the {grid[0]}x{grid[1]} unit grid '
            f'({units} units of {backbone.mask_unit} px): the loss counts masked units only, so '
            f'it would be NaN. Use a ratio that masks at least one unit (GreenMIM: 0.75).')


def backbone_out_widths(backbone: torch.nn.Module) -> Optional[List[int]]:
    """Channels of every backbone output, in ``out_indices`` order: ``feature_info``'s
    ``num_chs`` (sparse backbones), else the ViT's ``embed_dims`` for each out index; None when
    the backbone states neither."""
    info = getattr(backbone, 'feature_info', None)
    if info is not None:
        return [int(f['num_chs']) for f in info]
    dims = getattr(backbone, 'embed_dims', None)
    if isinstance(dims, int) and hasattr(backbone, 'out_indices'):
        return [dims] * len(backbone.out_indices)
    return None


def check_decoder_widths(backbone: torch.nn.Module, necks: Sequence[torch.nn.Module],
                         keys: Sequence[str], outputs: Optional[Sequence[int]] = None) -> None:
    """Every decoder's ``in_channels`` equals the width of the backbone output it reads
    (``outputs[k]``, an index into the backbone's outputs, default k); decoders without
    ``in_channels`` and backbones of unknown widths are not checked.

    Raises:
        ModelConfigError: naming, for every mismatched decoder (``; ``-separated), the config key
            (``keys[k]``), both widths and the output, at build time instead of torch's matmul
            shape error at the first step (GreenMIM#10).
    """
    widths = backbone_out_widths(backbone)
    if widths is None:
        return
    outputs = range(len(necks)) if outputs is None else outputs
    wrong = []
    for neck, key, out in zip(necks, keys, outputs):
        given = getattr(neck, 'in_channels', None)
        width = widths[out]
        if given is not None and int(given) != width:
            index = tuple(backbone.out_indices)[out]
            wrong.append(
                f'{key}.in_channels={given}, but the backbone output it reads '
                f'({type(backbone).__name__} out index {index}) is {width} wide: set '
                f'{key}.in_channels={width} (or a backbone arch whose output is {given} wide)')
    if wrong:
        raise ModelConfigError('; '.join(wrong))


def _build(cfg: Union[dict, torch.nn.Module]) -> torch.nn.Module:
    """A module from a config dict (greenmim_mm's registry, mmpretrain's as fallback)."""
    return cfg if isinstance(cfg, torch.nn.Module) else MODELS.build(cfg)


def _single_view(inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """The image batch (B, C, H, W) from a tensor or a one-view list (SelfSupDataPreprocessor)."""
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            raise ValueError(f'GreenMIM takes one view per image; got {len(inputs)}')
        inputs = inputs[0]
    return inputs
