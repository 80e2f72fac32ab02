"""Sparse depthwise 3x3 convolution (Twins' PEG on visible tokens): 'dense' (scatter -> dense
depthwise conv -> gather) vs 'gather' (neighbour gather), side by side.

Each row: one Twins-SVT stage at the given input size and mask ratio (one random mask of 32-px
units), forward + backward of ``sparse_depthwise_conv`` on (batch, visible tokens, channels);
the two modes alternate round by round; the table reports median milliseconds and the ratio.

    OMP_NUM_THREADS=2 tools/env.sh python tools/benchmark_sparse_conv.py --arch large
    tools/env.sh python tools/benchmark_sparse_conv.py --device cuda --batch 64
"""
import argparse
import statistics
import time

CHANNELS = {'nano': [32, 64, 128, 256], 'small': [64, 128, 256, 512],
            'base': [96, 192, 384, 768], 'large': [128, 256, 512, 1024]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='large', choices=sorted(CHANNELS))
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--ratios', type=float, nargs='+', default=[0.75, 0.5, 0.0])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and bad arguments answered before torch is imported

import torch  # noqa: E402


def stage_inputs(args, ratio, stage, gen):
    """(x, coords, hw, weight, bias, neighbours) of one stage for one random unit mask."""
    from greenmim_mm.ops import neighbour_index, random_unit_mask, upsample_mask, visible_coords
    units = args.img_size // 32
    mask = random_unit_mask((units, units), ratio, gen)
    tokens = upsample_mask(mask, 8 // 2**stage).numpy()
    coords_np = visible_coords(tokens)
    c = CHANNELS[args.arch][stage]
    dev = args.device
    x = torch.randn(args.batch, len(coords_np), c, generator=gen).to(dev).requires_grad_()
    weight = torch.randn(c, 1, 3, 3, generator=gen).to(dev).requires_grad_()
    bias = torch.randn(c, generator=gen).to(dev).requires_grad_()
    nbr = torch.from_numpy(neighbour_index(coords_np, tokens.shape)).to(dev)
    return x, torch.from_numpy(coords_np).to(dev), tokens.shape, weight, bias, nbr


def time_modes(args, inputs):
    """{mode: median seconds of forward + backward}."""
    from greenmim_mm.ops import SPARSE_CONV_MODES, sparse_depthwise_conv
    x, coords, hw, weight, bias, nbr = inputs
    times = {m: [] for m in SPARSE_CONV_MODES}
    for r in range(args.iters + 2):
        for mode in SPARSE_CONV_MODES:
            if args.device.startswith('cuda'):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = sparse_depthwise_conv(x, coords, hw, weight, bias, nbr, mode)
            out.sum().backward()
            if args.device.startswith('cuda'):
                torch.cuda.synchronize()
            if r >= 2:
                times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    print(f'Twins-SVT-{args.arch} PEG, {args.img_size} px, batch {args.batch}, {args.device}, '
          f'torch threads {torch.get_num_threads()}; median ms of forward + backward')
    print(f'{"ratio":>5s} {"stage":>5s} {"tokens":>7s} {"C":>5s} {"dense ms":>9s} '
          f'{"gather ms":>9s} {"dense/gather":>12s}')
    for ratio in args.ratios:
        total = {'dense': 0.0, 'gather': 0.0}
        for stage in range(4):
            inputs = stage_inputs(args, ratio, stage, gen)
            med = time_modes(args, inputs)
            for m in total:
                total[m] += med[m]
            print(f'{ratio:5.2f} {stage:5d} {inputs[0].shape[1]:7d} {inputs[0].shape[2]:5d} '
                  f'{med["dense"] * 1e3:9.2f} {med["gather"] * 1e3:9.2f} '
                  f'{med["dense"] / med["gather"]:11.2f}x')
        print(f'{ratio:5.2f} {"all":>5s} {"":7s} {"":5s} {total["dense"] * 1e3:9.2f} '
              f'{total["gather"] * 1e3:9.2f} {total["dense"] / total["gather"]:11.2f}x')


if __name__ == '__main__':
    main()
