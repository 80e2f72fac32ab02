"""Window attention over visible tokens only: two interchangeable backends.

Both take the visible tokens ``x`` (B, N, C) of one stage in raster order, a :class:`WindowPlan`
and one Swin block's attention weights, and return the attention output before the output
projection, (B, N, C), in raster order. A token attends exactly the visible tokens of its own
window, with Swin's relative position bias looked up from coordinate differences when a bias
table is given (``table=None``: no bias, as in Twins' LSA).

* ``'sdpa'`` (portable, CPU and GPU): windows packed into G equal groups of g slots (padding
  included), ``F.scaled_dot_product_attention`` with an additive mask carrying the bias and -inf
  between windows. The QKV projection runs on the N tokens, before padding.
* ``'flex'`` (packed, no padding; meant for GPU): tokens sorted by window in one sequence,
  FlexAttention with a block mask by window id and the bias as ``score_mod``.
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
    if table is None:
        bias = q.new_zeros(g_count, 1, g, g).expand(-1, num_heads, -1, -1)
    else:
        bias = table[plan.rel_index].permute(0, 3, 1, 2)                  # (G, heads, g, g)
    bias = bias.masked_fill(~plan.allowed[:, None], float('-inf'))
    bias = bias.reshape(1, g_count * num_heads, g, g).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                         scale=scale)                    # (B, G*heads, g, hd)
    out = out.view(b, g_count, num_heads, g, -1).permute(0, 1, 3, 2, 4).reshape(b, g_count * g, c)
    return out[:, plan.inverse]


def _compiled_flex():
    """The fused FlexAttention kernel (compiled once per process). The number of visible tokens
    per stage is fixed by the mask ratio, so shapes stay static across batches."""
    if not _COMPILED_FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED_FLEX.append(torch.compile(flex_attention))
    return _COMPILED_FLEX[0]


def _flex_block_mask(plan: WindowPlan, device):
    """FlexAttention block mask 'same window', cached on the plan (one per forward pass)."""
    cache = plan.__dict__.setdefault('_flex_cache', {})
    if 'block_mask' not in cache:
        from torch.nn.attention.flex_attention import create_block_mask
        wid = plan.window_id
        n = wid.numel()

        def same_window(b, h, q_idx, kv_idx):
            return wid[q_idx] == wid[kv_idx]

        cache['block_mask'] = create_block_mask(same_window, B=None, H=None, Q_LEN=n, KV_LEN=n,
                                                device=device)
        cache['unsort'] = torch.argsort(plan.order)
    return cache['block_mask'], cache['unsort']


def flex_window_attention(x: torch.Tensor, plan: WindowPlan, qkv_weight: torch.Tensor,
                          qkv_bias, table: torch.Tensor, num_heads: int,
                          scale: float) -> torch.Tensor:
    """Packed window attention with FlexAttention (no padding). x (B, N, C) -> (B, N, C)."""
    from torch.nn.attention.flex_attention import flex_attention
    b, n, c = x.shape
    block_mask, unsort = _flex_block_mask(plan, x.device)
    qkv = _split_heads_qkv(x[:, plan.order], qkv_weight, qkv_bias, num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                          # (B, heads, N, hd)
    rows, cols, w = plan.coords[:, 0], plan.coords[:, 1], plan.window
    add_bias = None
    if table is not None:
        last = table.shape[0] - 1

        def add_bias(score, bi, h, q_idx, kv_idx):
            idx = ((rows[q_idx] - rows[kv_idx] + w - 1) * (2 * w - 1)
                   + (cols[q_idx] - cols[kv_idx] + w - 1))
            return score + table[idx.clamp(0, last), h].to(score.dtype)

    attend = _compiled_flex() if x.is_cuda else flex_attention  # eager (unfused) on CPU
    out = attend(q, k, v, score_mod=add_bias, block_mask=block_mask, scale=scale)
    out = out.permute(0, 2, 1, 3).reshape(b, n, c)
    return out[:, unsort]


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
