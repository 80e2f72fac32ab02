"""Window attention over visible tokens only: two interchangeable backends.

Both take the visible tokens ``x`` (B, N, C) of one stage in raster order, a :class:`WindowPlan`
and one Swin block's attention weights, and return the attention output before the output
projection, (B, N, C), in raster order. A token attends exactly the visible tokens of its own
window, with Swin's relative position bias looked up from coordinate differences when a bias
table is given (``table=None``: no bias, as in Twins' LSA).

* ``'sdpa'`` (portable, CPU and GPU): windows packed into G equal groups of g slots (padding
  included), ``F.scaled_dot_product_attention`` with an additive mask carrying the bias and -inf
  between windows. The QKV projection runs on the N tokens, before padding.
* ``'flex'`` (packed; meant for GPU): tokens sorted by window in one sequence, every window
  starting at a block boundary, FlexAttention with the plan's host-built block mask (same window)
  and the bias as ``score_mod``.
"""
import torch
import torch.nn.functional as F

from .windows import WindowPlan

BACKENDS = ('auto', 'sdpa', 'flex')
_COMPILED_FLEX = []  # torch.compile(flex_attention), built once on first CUDA use


def flex_available() -> bool:
    """True if this torch has FlexAttention."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, attn_drop: float, training: bool) -> str:
    """'auto' -> 'flex' on CUDA when FlexAttention exists and no attention dropout is active,
    else 'sdpa'. An explicit choice is checked."""
    if backend not in BACKENDS:
        raise ValueError(f'attn_backend must be one of {BACKENDS}; got {backend!r}')
    dropout_active = attn_drop > 0 and training
    if backend == 'auto':
        use_flex = device.type == 'cuda' and flex_available() and not dropout_active
        return 'flex' if use_flex else 'sdpa'
    if backend == 'flex':
        if not flex_available():
            raise RuntimeError('attn_backend="flex" needs torch.nn.attention.flex_attention')
        if dropout_active:
            raise ValueError('attn_backend="flex" does not support attention dropout; use "sdpa"')
    return backend


def _split_heads_qkv(x, qkv_weight, qkv_bias, num_heads):
    """(B, N, C) -> (B, N, 3, heads, C/heads)."""
    b, n, c = x.shape
    return F.linear(x, qkv_weight, qkv_bias).view(b, n, 3, num_heads, c // num_heads)


def group_pairs(plan: WindowPlan):
    """(allowed (G, g, g) bool, rel_index (G, g, g) long) of a padded plan, on its device:
    query/key slots of one window (a padding slot: itself only) and their bias-table row
    (Swin's ``relative_position_index``; 0 where not allowed)."""
    side = 2 * plan.window - 1
    allowed = plan.slot_window[:, :, None] == plan.slot_window[:, None, :]
    rel = plan.slot_code[:, :, None] - plan.slot_code[:, None, :] + (plan.window - 1) * (side + 1)
    return allowed, rel * allowed


def padded_window_attention(x: torch.Tensor, plan: WindowPlan, qkv_weight: torch.Tensor,
                            qkv_bias, table: torch.Tensor, num_heads: int, scale: float,
                            dropout_p: float = 0.0) -> torch.Tensor:
    """Grouped window attention with padding and SDPA. x (B, N, C) -> (B, N, C)."""
    b, n, c = x.shape
    g_count, g = plan.slots.shape
    qkv = _split_heads_qkv(x, qkv_weight, qkv_bias, num_heads)
    qkv = torch.cat([qkv, qkv.new_zeros(b, 1, *qkv.shape[2:])], dim=1)   # padding row N
    qkv = qkv[:, plan.slots.reshape(-1)].view(b, g_count, g, 3, num_heads, c // num_heads)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, g_count * num_heads, g, -1).unbind(0)
    allowed, rel_index = group_pairs(plan)
    if table is None:
        bias = q.new_zeros(g_count, 1, g, g).expand(-1, num_heads, -1, -1)
    else:
        bias = table[rel_index].permute(0, 3, 1, 2)                       # (G, heads, g, g)
    bias = bias.masked_fill(~allowed[:, None], float('-inf'))
    bias = bias.reshape(1, g_count * num_heads, g, g).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                         scale=scale)                    # (B, G*heads, g, hd)
    out = out.view(b, g_count, num_heads, g, -1).permute(0, 1, 3, 2, 4).reshape(b, g_count * g, c)
    return out[:, plan.inverse]


def _compiled_flex():
    """The fused FlexAttention kernel (compiled once per process). Every plan shape is static per
    (mask ratio, image size), so it does not recompile across masks."""
    if not _COMPILED_FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED_FLEX.append(torch.compile(flex_attention))
    return _COMPILED_FLEX[0]


def flex_block_mask(plan: WindowPlan):
    """The plan's FlexAttention ``BlockMask`` from its host-built index arrays (no
    ``create_block_mask``, nothing computed on the device). mask_mod: same window."""
    from torch.nn.attention.flex_attention import BlockMask
    wid = plan.window_id

    def same_window(b, h, q_idx, kv_idx):
        return wid[q_idx] == wid[kv_idx]

    length = wid.shape[0]
    return BlockMask((length, length), plan.kv_num_blocks, plan.kv_indices,
                     plan.full_kv_num_blocks, plan.full_kv_indices, plan.q_num_blocks,
                     plan.q_indices, plan.full_q_num_blocks, plan.full_q_indices,
                     (plan.block, plan.block), same_window)


def flex_kernel_options(plan: WindowPlan, device: torch.device):
    """GPU forward tiles that divide the plan's block (Triton's default 128/64 tiles would not);
    None on the CPU. Not verified on a GPU yet: torch 2.11 picks the backward tiles from its own
    configs (64 for bf16 on sm90) and skips those that do not divide the block, so the bf16
    backward at 16-token blocks needs the device check (fp32 uses 16-tiles)."""
    if device.type != 'cuda':
        return None
    return {'BLOCK_M': plan.block, 'BLOCK_N': plan.block}


def flex_window_attention(x: torch.Tensor, plan: WindowPlan, qkv_weight: torch.Tensor,
                          qkv_bias, table: torch.Tensor, num_heads: int, scale: float,
                          compiled: bool = None) -> torch.Tensor:
    """Packed window attention with FlexAttention. x (B, N, C) -> (B, N, C).

    The QKV projection runs on the N tokens; the packed sequence (L slots, windows at block
    boundaries, padding rows zero) goes through FlexAttention with the plan's BlockMask and the
    relative-position bias as ``score_mod``. ``compiled`` (default: on CUDA) uses
    ``torch.compile(flex_attention)``; inside an outer ``torch.compile`` flex is compiled
    anyway."""
    from torch.nn.attention.flex_attention import flex_attention
    b, n, c = x.shape
    qkv = _split_heads_qkv(x, qkv_weight, qkv_bias, num_heads)
    qkv = torch.cat([qkv, qkv.new_zeros(b, 1, *qkv.shape[2:])], dim=1)   # padding row N
    q, k, v = qkv[:, plan.order].permute(2, 0, 3, 1, 4).unbind(0)            # (B, heads, L, hd)
    rows, cols, w = plan.rows, plan.cols, plan.window                       # contiguous (L,)
    add_bias = None
    if table is not None:
        last = table.shape[0] - 1

        def add_bias(score, bi, h, q_idx, kv_idx):
            idx = ((rows[q_idx] - rows[kv_idx] + w - 1) * (2 * w - 1)
                   + (cols[q_idx] - cols[kv_idx] + w - 1))
            return score + table[idx.clamp(0, last), h].to(score.dtype)

    use_compiled = x.is_cuda if compiled is None else compiled
    attend = _compiled_flex() if use_compiled else flex_attention
    out = attend(q, k, v, score_mod=add_bias, block_mask=flex_block_mask(plan), scale=scale,
                 kernel_options=flex_kernel_options(plan, x.device))
    out = out.permute(0, 2, 1, 3).reshape(b, -1, c)
    return out[:, plan.inverse]


def window_attention(x, plan, qkv_weight, qkv_bias, table, num_heads, scale,
                     backend: str = 'sdpa', dropout_p: float = 0.0) -> torch.Tensor:
    """Dispatch to a resolved backend ('sdpa' or 'flex'); ValueError if ``plan`` was built for
    the other backend's layout."""
    want = 'packed' if backend == 'flex' else 'padded'
    if plan.layout != want:
        raise ValueError(f'attention backend {backend!r} needs a {want!r} window plan; got '
                         f'{plan.layout!r} (build the geometry for the backend in use)')
    if backend == 'flex':
        return flex_window_attention(x, plan, qkv_weight, qkv_bias, table, num_heads, scale)
    return padded_window_attention(x, plan, qkv_weight, qkv_bias, table, num_heads, scale,
                                   dropout_p)
