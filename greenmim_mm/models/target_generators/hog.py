"""LocalMIM's HOG target (Wang et al., CVPR 2023; LocalMIM's official code) at any cell size.

Per colour channel of the normalised input: 3x3 Sobel-type gradients with reflect padding,
magnitude and unsigned orientation, hard binning, per-cell average pooling, L2 normalisation of
each cell's histogram; colour channels concatenated.
"""
import math
import torch
import torch.nn.functional as F
from mmpretrain.models.selfsup import HOGGenerator

from greenmim_mm.registry import MODELS


@MODELS.register_module()
class LocalMIMHOGGenerator(HOGGenerator):
    """HOG per ``cell x cell`` cell: (B, 3, H, W) -> (B, H/cell * W/cell, 3 * nbins).

    1. gx, gy: mmpretrain's ``HOGGenerator`` Sobel kernels (``weight_x`` = [[1,0,-1],[2,0,-2],
       [1,0,-1]], ``weight_y`` its transpose) on each colour channel, reflect padding by 1;
       with ``gradient_bias`` a constant (bx, by) is added to gx, gy.
    2. magnitude sqrt(gx² + gy²), bin floor(atan2(gx, gy) / pi * nbins) mod nbins (hard,
       unsigned: opposite gradients share a bin); each pixel's magnitude goes into its bin.
    3. average pooling with kernel = stride = ``cell`` (no Gaussian window), then each cell's
       histogram is L2-normalised over its bins, per colour channel (``F.normalize``).
    4. values ordered (colour channel, bin): index ``c * nbins + bin``; cells in raster order.

    Reused from mmpretrain's ``HOGGenerator`` (MaskFeat): the class (``nbins``, ``pool``,
    ``generate_hog_image`` for drawing), its Sobel kernels (its ``weight_x``/``weight_y``
    buffers; applied here as the equivalent separable slice arithmetic, which is several times
    faster on the CPU than its 3-channel depthwise convolution) and its binning convention
    (steps 1-2 without the bias compute what its ``forward`` computes). Not reused: its ``forward`` as a whole, which
    multiplies a Gaussian window, sum-pools and reshapes onto a fixed 14-cell grid; sum and
    average pooling differ by a constant per cell, which the L2 normalisation removes, so with
    ``gaussian_window=0`` and ``pool=cell`` its ``out`` equals steps 1-3 (tested).

    Args:
        cell (int): cell side in pixels (LocalMIM: ViT 4/8/16/32, Swin 8/16/32/32).
        nbins (int): orientation bins over [0, pi) (LocalMIM: 9 for ViT-B, 18 otherwise).
        gradient_bias (bool): the frozen random gradient bias of LocalMIM's ``--hog_bias``
            (ViT-L, Swin-B-HOG and Swin-L recipes): (bx, by) ~ U(-1/3, 1/3), PyTorch's default
            bias init of a one-input-channel 3x3 conv (fan-in 9), drawn once at construction
            and kept in the persistent buffer ``gradient_bias`` (never trained). The official
            conv layout behind that fan-in is not verified (only its effect is documented).

    Raises ValueError for inputs that are not (B, 3, H, W) with sides multiples of ``cell``.
    """

    def __init__(self, cell: int, nbins: int = 9, gradient_bias: bool = False):
        super().__init__(nbins=int(nbins), pool=int(cell), gaussian_window=0)
        self.cell = int(cell)
        bias = torch.empty(2).uniform_(-1 / 3, 1 / 3) if gradient_bias else None
        self.register_buffer('gradient_bias', bias, persistent=True)
        self._offsets = {}

    @property
    def out_channels(self) -> int:
        """Target values per cell (3 colour channels x nbins)."""
        return 3 * self.nbins

    def gradients(self, imgs: torch.Tensor):
        """(B, 3, H, W) -> gx, gy, each (B, 3, H, W) (fp32): the cross-correlation with
        ``weight_x`` / ``weight_y`` after reflect padding, computed separably ((1, 2, 1) smoothing
        of a central difference) from shifted slices (equal to mmpretrain's conv; tested).
        Fused ``add(.., alpha=2)`` / in-place adds, same operation order as the plain
        ``a + 2 * b + c``: bitwise the same values at about a quarter of the time on the CPU."""
        x = F.pad(imgs.float(), (1, 1, 1, 1), mode='reflect')
        dx = x[..., :, :-2] - x[..., :, 2:]  # left - right, (B, 3, H + 2, W)
        dy = x[..., :-2, :] - x[..., 2:, :]  # up - down, (B, 3, H, W + 2)
        gx = torch.add(dx[..., :-2, :], dx[..., 1:-1, :], alpha=2).add_(dx[..., 2:, :])
        gy = torch.add(dy[..., :, :-2], dy[..., :, 1:-1], alpha=2).add_(dy[..., :, 2:])
        if self.gradient_bias is not None:
            gx.add_(self.gradient_bias[0])
            gy.add_(self.gradient_bias[1])
        return gx, gy

    def magnitude_and_bins(self, imgs: torch.Tensor):
        """(B, 3, H, W) -> gradient magnitude (fp32) and orientation bin (int64), (B, 3, H, W)."""
        gx, gy = self.gradients(imgs)
        return torch.hypot(gx, gy), self._bins(gx, gy).long()

    def _bins(self, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """floor(atan2(gx, gy) / pi * nbins) mod nbins, in fp32 (small integers, exact): the
        same float operations in the same order as the plain expression, in place.

        A NaN orientation (non-finite input) goes to bin 0 instead of becoming int64's minimum
        as an index (an out-of-bounds scatter): its magnitude is NaN or inf, so the histogram,
        the target and the loss are NaN and the run stops with ``NonFiniteLossError``, with no
        host synchronisation here."""
        angle = torch.atan2(gx, gy)
        angle.div_(math.pi).mul_(self.nbins).floor_().remainder_(self.nbins)
        return angle.nan_to_num_(0.)

    def prepare(self, img_hw, device) -> None:
        """Fill the per-size cache for images of ``img_hw`` on ``device`` (the algorithms' host
        side calls it, so that a compiled step never sees the cache change)."""
        self._cell_offsets(int(img_hw[0]), int(img_hw[1]), device)

    def _cell_offsets(self, height: int, width: int, device) -> torch.Tensor:
        """(H, W) int64: nbins x the raster index of each pixel's cell (cached per size)."""
        key = (height, width, str(device))
        if key not in self._offsets:
            rows = torch.arange(height, device=device) // self.cell
            cols = torch.arange(width, device=device) // self.cell
            self._offsets[key] = (rows[:, None] * (width // self.cell) + cols[None, :]) * self.nbins
        return self._offsets[key]

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        self._check(imgs)
        gx, gy = self.gradients(imgs)
        magnitude = torch.hypot(gx, gy)
        b, c, height, width = magnitude.shape
        cells = (height // self.cell) * (width // self.cell)
        # average pooling of the per-pixel one-hot histograms: one scatter into (cell, bin)
        # slots, laid out cell-major so that the result needs no permutation of the pixels
        index = self._bins(gx, gy).long().add_(self._cell_offsets(height, width, imgs.device))
        hist = magnitude.new_zeros(b, c, cells * self.nbins)
        hist.scatter_add_(2, index.view(b, c, -1), magnitude.view(b, c, -1).div_(self.cell**2))
        hist = F.normalize(hist.view(b, c, cells, self.nbins), p=2, dim=3)
        return hist.transpose(1, 2).reshape(b, cells, c * self.nbins)

    def _check(self, imgs: torch.Tensor) -> None:
        if imgs.dim() != 4 or imgs.shape[1] != 3:
            raise ValueError(f'HOG targets need (B, 3, H, W) images; got {tuple(imgs.shape)}')
        if imgs.shape[-2] % self.cell or imgs.shape[-1] % self.cell:
            raise ValueError(f'image sides {tuple(imgs.shape[-2:])} are not multiples of the '
                             f'{self.cell}-px HOG cell')
