"""Mixed precision without a loss scaler: ``AutocastOptimWrapper`` (bf16 by default)."""
from contextlib import contextmanager
from typing import Union

import torch
from mmengine.optim import OptimWrapper

from greenmim_mm.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """mmengine's ``OptimWrapper`` with the forward under ``autocast(dtype)`` and no
    ``GradScaler``: bf16 has fp32's exponent range, so gradients need no scaling, and the
    scaler's per-step overflow check (a device read in ``GradScaler.step``) goes away. The
    pre-training configs use it with bf16 (A100, H100 and newer; CPU too).

    fp16-only GPUs (V100, T4) keep mmengine's scaler: set
    ``optim_wrapper = dict(type='AmpOptimWrapper', dtype='float16', loss_scale='dynamic')``.

    Args:
        dtype (str | torch.dtype): 'bfloat16' (default) or 'float32' (autocast off in effect).
            'float16' is refused (ValueError): it needs a loss scaler.
        **kwargs: as ``OptimWrapper`` (optimizer, accumulative_counts, clip_grad).

    The state dict is ``OptimWrapper``'s (the optimizer's), so a run resumes from a checkpoint of
    ``OptimWrapper``; one of ``AmpOptimWrapper`` carries an extra ``loss_scaler`` entry that this
    wrapper drops on load.
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"AutocastOptimWrapper dtype must be 'bfloat16' or 'float32' (fp16 "
                             f"needs a loss scaler: use AmpOptimWrapper); got {dtype!r}")
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        from mmengine.runner.amp import autocast
        with super().optim_context(model), autocast(dtype=self.cast_dtype,
                                                    enabled=self.cast_dtype != torch.float32):
            yield

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = {k: v for k, v in state_dict.items() if k != 'loss_scaler'}
        super().load_state_dict(state_dict)
