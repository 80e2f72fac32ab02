"""Pre-training step benchmark: LocalMIM vs GreenMIM on the same sparse Swin, mask and batch.

One step = forward + backward + AdamW step. Both algorithms run the same GreenSwinTransformer
(LocalMIM with its outputs after patch merging), draw the same masks (same ``mask_seed``, one per
step) and take the same images; the models are timed alternately, round by round, in one process.
The table reports the median step time, images/s, peak memory (measured as tools/benchmark.py
does: CUDA allocator peak, or a CPU child's resident-set growth) and the ratios to GreenMIM.

    OMP_NUM_THREADS=2 tools/env.sh python tools/benchmark_localmim.py --arch tiny --batch 4
    tools/env.sh python tools/benchmark_localmim.py --device cuda --arch base --batch 128 --amp

``--isolated`` adds LocalMIM HOG with isolated gradients (``isolate_grad=True``) as a fourth row.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ('GreenMIM', 'LocalMIM HOG', 'LocalMIM Pixel')
ARCHS = ('base', 'large', 'nano', 'small', 'tiny')  # tools/benchmark.py's ARCH_DIMS (checked below)
ISOLATED = 'LocalMIM HOG isolated'  # --isolated: LocalMIM(isolate_grad=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='tiny', choices=ARCHS)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--window', type=int, default=None,
                   help='Swin window (default: 7 at multiples of 224 px, else 6)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--iters', type=int, default=8, help='timed rounds')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', action='store_true', help='bf16 autocast')
    p.add_argument('--backend', default='sdpa', choices=['sdpa', 'flex'])
    p.add_argument('--no-memory', action='store_true',
                   help='skip the memory pass (a child process per model on CPU)')
    p.add_argument('--isolated', action='store_true',
                   help=f'also run "{ISOLATED}": LocalMIM HOG with isolate_grad=True')
    p.add_argument('--only', default=None, help=argparse.SUPPRESS)  # child: memory of one model
    p.add_argument('--json', default=None, help='also write the results to this file')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and bad arguments answered before torch is imported

import torch  # noqa: E402

from benchmark import ARCH_DIMS, _status_kib, sync  # noqa: E402

assert set(ARCHS) == set(ARCH_DIMS), 'ARCHS must list tools/benchmark.py ARCH_DIMS'


def model_cfg(name, args):
    """The config of ``name``: GreenMIM's paper decoder, or LocalMIM's Swin heads (LocalMIM's official
    code: decoders 64/128/128/128, HOG nbins 18 + bias or norm-pix pixels)."""
    window = args.window or (7 if args.img_size % 224 == 0 else 6)
    c = ARCH_DIMS[args.arch]
    backbone = dict(type='GreenSwinTransformer', arch=args.arch,
                    img_size=args.img_size, window_size=window, drop_path_rate=0.0,
                    attn_backend=args.backend, norm_cfg=dict(type='LN', eps=1e-6))
    if name == 'GreenMIM':
        return dict(type='GreenMIM', mask_seed=0, backbone=backbone,
                    neck=dict(type='MAEUnitDecoder', in_channels=8 * c, embed_dims=512, depth=1,
                              num_heads=16),
                    head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True))
    strides, widths = [8, 16, 32, 32], [64, 128, 128, 128]
    if name.startswith('LocalMIM HOG'):
        targets = [dict(type='LocalMIMHOGGenerator', cell=s, nbins=18, gradient_bias=True)
                   for s in strides]
        dims = [54] * 4
    else:
        targets = [dict(type='PixelTargetGenerator', cell=s, norm_pix=True) for s in strides]
        dims = [3 * s * s for s in strides]
    backbone.update(out_indices=(0, 1, 2, 3), out_after_downsample=True)
    return dict(type='LocalMIM', mask_seed=0, backbone=backbone,
                necks=[dict(type='MAEGridDecoder', in_channels=m * c, embed_dims=w, depth=1,
                            num_heads=4, pred_dims=d)
                       for m, w, d in zip([2, 4, 8, 8], widths, dims)],
                heads=[dict(type='CellReconstructionHead', target_generator=t)
                       for t in targets],
                isolate_grad=name == ISOLATED)


def variants(args):
    """The models compared: GreenMIM, LocalMIM HOG and Pixel (and HOG isolated)."""
    return VARIANTS + ((ISOLATED, ) if args.isolated else ())


def build(name, args):
    import greenmim_mm  # noqa: F401
    from mmengine.registry import init_default_scope
    init_default_scope('greenmim_mm')
    from greenmim_mm.registry import MODELS
    torch.manual_seed(0)
    return MODELS.build(model_cfg(name, args)).to(args.device).train()


def make_step(model, args):
    """A closure: forward, the total loss (the sum of every 'loss*' entry, as mmengine's
    ``parse_losses``), backward, AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    amp = torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16, enabled=args.amp)

    def step(x, samples):
        with amp:
            losses = model.loss(x, samples)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def images(args):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen).to(args.device)


def time_all(args):
    """Alternate one step of each model per round; {name: [seconds per step]}."""
    x = images(args)
    steps = {name: make_step(build(name, args), args) for name in variants(args)}
    times = {name: [] for name in variants(args)}
    for r in range(args.warmup + args.iters):
        for name, step in steps.items():
            sync(args.device)
            t0 = time.perf_counter()
            step(x, [])
            sync(args.device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def peak_memory(args, name):
    """Peak memory (MiB) of one model's training steps (after one warm-up step)."""
    if args.device.startswith('cuda'):
        step, x = make_step(build(name, args), args), images(args)
        step(x, [])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(x, [])
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, '--only', name] + sys.argv[1:]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def peak_rss_growth(step) -> float:
    """CPU: peak resident-set growth (MiB) over two calls of ``step`` after a warm-up call
    (Linux's peak RSS reset through /proc/self/clear_refs, as tools/benchmark.py)."""
    step()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    base = _status_kib('VmRSS')
    for _ in range(2):
        step()
    return (_status_kib('VmHWM') - base) / 1024


def report(args, times, memory):
    med = {n: statistics.median(t) for n, t in times.items()}
    base_t, base_m = med['GreenMIM'], max(memory['GreenMIM'], 1e-9)
    print(f'\nSwin-{args.arch} @{args.img_size}px, batch {args.batch}, device {args.device}, '
          f'{"bf16 AMP" if args.amp else "fp32"}, same masks and images, {args.iters} '
          'alternating rounds (median step = forward + backward + AdamW)')
    print(f'{"model":21s} {"step ms":>9s} {"img/s":>8s} {"peak MiB":>9s} '
          f'{"time vs GreenMIM":>17s} {"memory vs GreenMIM":>19s}')
    rows = []
    for name in variants(args):
        row = dict(model=name, step_ms=med[name] * 1e3, img_per_s=args.batch / med[name],
                   peak_mib=memory[name], time_vs_greenmim=med[name] / base_t,
                   memory_vs_greenmim=memory[name] / base_m)
        rows.append(row)
        print(f'{name:21s} {row["step_ms"]:9.1f} {row["img_per_s"]:8.2f} {memory[name]:9.0f} '
              f'{row["time_vs_greenmim"]:16.3f}x {row["memory_vs_greenmim"]:18.3f}x')
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    if args.only:
        step, x = make_step(build(args.only, args), args), images(args)
        print(peak_rss_growth(lambda: step(x, [])))
        return None
    times = time_all(args)
    memory = {name: float('nan') if args.no_memory else peak_memory(args, name)
              for name in variants(args)}
    rows = report(args, times, memory)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)
    return rows


if __name__ == '__main__':
    main()
