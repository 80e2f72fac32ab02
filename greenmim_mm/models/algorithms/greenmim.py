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
    """

    def __init__(self, backbone: dict, neck: dict, head: dict, mask_ratio: float = 0.75,
                 mask_seed: Optional[int] = None, pretrained: Optional[str] = None,
                 data_preprocessor: Optional[Union[dict, torch.nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
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
        mask = draw_unit_mask(unit_grid(img_hw, self.unit), self.mask_ratio, self.base_seed,
                              get_rank(), self._step)
        if not bool(mask.any()):
            raise ValueError(f'mask_ratio={self.mask_ratio} masks no unit of the '
                             f'{tuple(mask.shape)} unit grid of a {tuple(img_hw)} input')
        self._step += 1
        self.mask_step.fill_(self._step)
        return mask

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
        return dict(loss=self.model_step(img, *self.plan_step(img.shape[-2:], img.device)))

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
    def plan_step(self, img_hw: Sequence[int], device) -> tuple:
        """The host side of a step, never traced by ``torch.compile``: the step's mask and
        geometry and the decoder's visible / masked cell indices, all on ``device``
        (non-blocking copies). Advances the mask step. Also fills the decoder's position-embedding
        cache for the grid here, so a compiled step never sees the cache change."""
        mask = self.next_mask(img_hw)
        geometry = self.backbone.sparse_geometry(mask, img_hw, device)
        vis, cells = visible_cell_index(mask), masked_cell_index(mask)
        if hasattr(self.neck, 'pos_embed'):
            self.neck.pos_embed(tuple(mask.shape), torch.empty(0, device=device))
        return tuple(_to_device(v, device) for v in (mask, geometry, vis, cells))

    def masked_loss(self, img: torch.Tensor, mask: torch.Tensor, geometry: list,
                    vis: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The model step on the plan of ``plan_step`` (one graph under ``torch.compile``):
        sparse encoder, decoder at the masked cells, scalar loss."""
        latent = self.backbone(img, mask=mask, geometry=geometry)[-1]
        return self.head.loss(decode_cells(self.neck, latent, mask, cells, vis), img, mask,
                              cells)

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


def masked_cell_loss(neck: torch.nn.Module, head: torch.nn.Module, latent: torch.Tensor,
                     img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One decoder's loss on the masked cells of its grid: latent (B, N_vis, C) of the visible
    cells of ``mask`` (H, W) -> scalar ``head.loss`` of ``neck``'s predictions at the masked cells
    only (equal to the loss of its predictions on the whole grid, whose visible cells weigh 0)."""
    # non_blocking, as the geometry transfer: no stream synchronisation on CUDA
    cells = masked_cell_index(mask).to(latent.device, non_blocking=True)
    return head.loss(decode_cells(neck, latent, mask, cells), img, mask, cells)


def check_compile_options(options: Union[bool, dict, None]) -> Union[bool, dict]:
    """``compile`` as False, True or a dict of ``torch.compile`` options; ValueError else."""
    if options is None:
        return False
    if not isinstance(options, (bool, dict)):
        raise ValueError(f'compile must be a bool or a dict of torch.compile options; got '
                         f'{options!r}')
    return options


def _to_device(value, device):
    """A tensor or a list of geometries on ``device`` (non-blocking; no-op when already
    there)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    return [g if g.coords.device == torch.device(device) else g.to(device) for g in value]


def check_greenmim_backbone(backbone: torch.nn.Module, neck: torch.nn.Module,
                            mask_ratio: float) -> None:
    """Build-time checks (ValueError): the backbone has a sparse path (``sparse_unsupported``);
    a single decoder (not a list, as LocalMIM's) reads only the
    last stage, so ``out_indices`` must be (last stage,); on a sparse Swin-like backbone
    (``mask_unit``, ``patch_stride``, ``patch_resolution``), ``mask_ratio`` must mask at least one
    unit of the unit grid of its ``img_size``."""
    reason = getattr(backbone, 'sparse_unsupported', None)
    if reason:
        raise ValueError(f'pre-training runs the sparse path of {type(backbone).__name__}, which '
                         f'this configuration does not have: {reason}')
    stages = getattr(backbone, 'stages', None)
    if stages is not None and not isinstance(neck, (torch.nn.ModuleList, list, tuple)):
        last = len(stages) - 1
        if tuple(backbone.out_indices) != (last, ):
            raise ValueError(
                f'GreenMIM uses only the last stage of the backbone, but out_indices='
                f'{tuple(backbone.out_indices)}: the other out norms would get no gradient (DDP '
                f'fails on them). Set model.backbone.out_indices=({last}, ).')
    if not all(hasattr(backbone, a) for a in ('mask_unit', 'patch_stride', 'patch_resolution')):
        return
    per_unit = backbone.mask_unit // backbone.patch_stride
    grid = tuple(int(r) // per_unit for r in backbone.patch_resolution)
    units = grid[0] * grid[1]
    if num_visible_units(units, mask_ratio) >= units:
        raise ValueError(
            f'mask_ratio={mask_ratio} masks no unit of the {grid[0]}x{grid[1]} unit grid '
            f'({units} units of {backbone.mask_unit} px): the loss counts masked units only, so '
            f'it would be NaN. Use a ratio that masks at least one unit (GreenMIM: 0.75).')


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
