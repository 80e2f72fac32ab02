"""tools/attention_scores.py's FLOP share of the static plan's padding (docs/gpu.md), against
torch's FlopCounterMode on an explicit Swin block: qkv, projection and MLP on the visible
tokens, QK^T and AV on a number of scores per head."""
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def block_flops(tokens: int, dims: int, heads: int, side: int) -> int:
    """FLOPs of one block whose attention evaluates side² scores per head (one square group)."""
    x = torch.randn(tokens, dims)
    w = [torch.randn(o, i) for o, i in ((3 * dims, dims), (dims, dims), (4 * dims, dims),
                                        (dims, 4 * dims))]
    q = k = v = torch.randn(heads, side, dims // heads)
    with FlopCounterMode(display=False) as counter:
        F.linear(x, w[0]), F.linear(x, w[1])
        F.linear(F.linear(x, w[2]), w[3])
        (q @ k.transpose(-1, -2)) @ v
    return counter.get_total_flops()


def test_padding_share_counts_the_block_flops(load_tool):
    tool = load_tool('attention_scores')
    tokens, dims, heads, needed, static = 96, 64, 2, 20, 45   # side lengths of the groups
    want = (block_flops(tokens, dims, heads, static) - block_flops(tokens, dims, heads, needed)) \
        / block_flops(tokens, dims, heads, needed)
    got = tool.padding_share(needed**2, static**2, tokens, dims)
    assert abs(got - want) <= 1e-12 * want


def test_design_score_table_is_the_tools_output(load_tool):
    """docs/design.md's attention-score table (Swin-B 224 px, ratio 0.75, 50 masks, shift 0)
    holds what the tool computes, to the digits it prints (the 128-tile column of stages 1 and 2
    once held other ratios)."""
    import os.path as osp
    import re
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    text = open(osp.join(root, 'docs', 'design.md')).read()
    rows = load_tool('attention_scores').stage_rows(224, 0.75, 50, 0, 7)
    table = re.findall(r'^\| (\d) \| ([\d ]+) \|(.*)\|$', text, re.M)
    assert len(table) == 4, table
    for stage, needed, cells in table:
        v = next(v for (s, _, shift), v in rows.items() if s == int(stage) and shift == 0)
        assert int(needed.replace(' ', '')) == round(v[0]), stage
        shown = [c.strip().rstrip('×') for c in cells.split('|')]
        for col, cell in enumerate(shown, start=1):
            digits = len(cell.split('.')[1]) if '.' in cell else 0
            assert abs(float(cell) - v[col] / v[0]) <= 0.5 * 10**-digits + 1e-9, (stage, col)
