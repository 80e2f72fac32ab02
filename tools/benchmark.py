"""Pre-training step benchmark: GreenMIM (ours, sparse) vs a dense SimMIM-style baseline, side by side.

Swin (``--backbone swin``): GreenMIM vs mmpretrain's SimMIM (SimMIMSwinTransformer, linear decoder,
L1 loss; masks from mmpretrain's ``SimMIMMaskGenerator``). Twins (``--backbone twins``): GreenMIM
with GreenTwinsSVT vs the same model run densely SimMIM-style: every token through the backbone,
a learned mask token in place of the masked units' stage-0 embeddings, the same mask, decoder and
loss (the visible units' latents go to the decoder, as in GreenMIM).

One step = forward + backward + AdamW step on one batch. The models are timed alternately, round
by round, in one process, so machine noise hits all of them alike; the table reports the median
step time, images/s, GFLOP per image, achieved GFLOP/s, peak memory and the ratios to SimMIM.
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward on the meta
device (matrix products, convolutions and attention; elementwise ops and the optimizer are not
counted), divided by the batch; achieved GFLOP/s = GFLOP per image x images/s. Memory: on CUDA the allocator's peak
per model (measured in its own pass); on CPU the peak resident-set growth of a child process that
runs only that model (growth over a warm-up step's resident set).

    tools/env.sh python tools/benchmark.py                      # CPU: Swin-T, 224 px, batch 4
    tools/env.sh python tools/benchmark.py --device cuda --arch base --img-size 224 \\
        --batch 128 --amp --backends sdpa flex                  # GPU: Swin-B, bf16 AMP
    tools/env.sh python tools/benchmark.py --backbone twins --arch small   # CPU: Twins-SVT-S
    OMP_NUM_THREADS=2 tools/env.sh python tools/benchmark.py --arch nano --img-size 128 --window 4 --compile
        # every GreenMIM row also compiled (torch.compile of the model step, the plan outside)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIMMIM_RATIO = 0.6   # SimMIM's recipe
GREENMIM_RATIO = 0.75  # GreenMIM's recipe
ARCH_DIMS = {'nano': 32, 'tiny': 96, 'small': 96, 'base': 128, 'large': 192}
# Twins-SVT last-stage widths ('nano' is the demo size, GreenTwinsSVT's arch 'nano').
TWINS_LAST = {'nano': 256, 'small': 512, 'base': 768, 'large': 1024}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbone', default='swin', choices=['swin', 'twins'])
    p.add_argument('--arch', default=None, choices=sorted(ARCH_DIMS),
                   help="default: 'tiny' (Swin), 'small' (Twins); 'nano' is the demo size")
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--window', type=int, default=None,
                   help='Swin window (default: 7 at multiples of 224 px, else 6)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--iters', type=int, default=8, help='timed rounds')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', action='store_true', help='bf16 autocast')
    p.add_argument('--backends', nargs='+', default=['sdpa'], choices=['sdpa', 'flex'])
    p.add_argument('--compile', action='store_true',
                   help='add a compiled twin of every GreenMIM model (GreenMIM compile=True: '
                        'torch.compile of the model step, the plan outside the graph), timed '
                        'in the same rounds after its warm-up (compilation not counted)')
    p.add_argument('--only', default=None, help=argparse.SUPPRESS)  # child: memory of one model
    p.add_argument('--json', default=None, help='also write the results to this file')
    p.add_argument('--no-memory', action='store_true',
                   help='skip the peak-memory pass (on the CPU: one child process per model)')
    p.add_argument('--no-flops', action='store_true',
                   help='skip the FLOP count (GFLOP/img and GFLOP/s columns show "-")')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and bad arguments answered before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402


def variants(args):
    """(name, kind, mask ratio, attention backend) of every model in the comparison; the first
    is the baseline of the ratios."""
    name = 'GreenMIM-Twins' if args.backbone == 'twins' else 'GreenMIM'
    if args.backbone == 'twins':
        out = [('Twins dense r0.75', 'twins-dense', GREENMIM_RATIO, 'sdpa')]
    else:
        out = [('SimMIM r0.6', 'simmim', SIMMIM_RATIO, None),
               ('SimMIM r0.75', 'simmim', GREENMIM_RATIO, None)]
    out += [(f'{name} r0.75 {b}', 'greenmim', GREENMIM_RATIO, b) for b in args.backends]
    if getattr(args, 'compile', False):
        out += [(f'{name} r0.75 {b} compiled', 'greenmim-compiled', GREENMIM_RATIO, b)
                for b in args.backends]
    return out


def build(kind, ratio, backend, args):
    """A pre-training model of ``kind`` ('greenmim' or 'simmim') at ``args.img_size``."""
    import greenmim_mm  # noqa: F401
    from mmengine.registry import init_default_scope
    init_default_scope('greenmim_mm')
    from greenmim_mm.registry import MODELS
    if args.backbone == 'twins':
        return build_twins(kind, ratio, backend, args)
    from greenmim_mm.models.backbones import SWIN_NANO
    window = args.window or (7 if args.img_size % 224 == 0 else 6)
    arch = SWIN_NANO if args.arch == 'nano' else args.arch  # mmpretrain's SimMIM lacks 'nano'
    c_last = ARCH_DIMS[args.arch] * 8
    stage_cfgs = dict(block_cfgs=dict(window_size=window))
    if kind == 'simmim':
        cfg = dict(
            type='SimMIM',
            backbone=dict(type='SimMIMSwinTransformer', arch=arch, img_size=args.img_size,
                          stage_cfgs=stage_cfgs, drop_path_rate=0.0),
            neck=dict(type='SimMIMLinearDecoder', in_channels=c_last, encoder_stride=32),
            head=dict(type='SimMIMHead', patch_size=4,
                      loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3)))
    else:
        cfg = dict(
            type='GreenMIM', mask_ratio=ratio, compile=kind == 'greenmim-compiled',
            backbone=dict(type='GreenSwinTransformer', arch=arch, img_size=args.img_size,
                          window_size=window, drop_path_rate=0.0, attn_backend=backend),
            neck=dict(type='MAEUnitDecoder', in_channels=c_last, embed_dims=512, depth=1,
                      num_heads=16),
            head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True))
    model = MODELS.build(cfg).to(args.device)
    model.train()
    return model


def build_twins(kind, ratio, backend, args):
    """GreenMIM with a GreenTwinsSVT, run sparse ('greenmim') or densely ('twins-dense')."""
    from greenmim_mm.registry import MODELS
    cfg = dict(
        type='GreenMIM', mask_ratio=ratio, compile=kind == 'greenmim-compiled',
        backbone=dict(type='GreenTwinsSVT', arch=args.arch, qkv_bias=True,
                      norm_after_stage=[False, False, False, True], drop_path_rate=0.0,
                      out_indices=(3, ), attn_backend=backend),
        neck=dict(type='MAEUnitDecoder', in_channels=TWINS_LAST[args.arch], embed_dims=512,
                  depth=1, num_heads=16),
        head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True))
    model = MODELS.build(cfg)
    if kind == 'twins-dense':
        model = DenseMaskTokenTwins(model)
    return model.to(args.device).train()


class DenseMaskTokenTwins(torch.nn.Module):
    """SimMIM-style dense baseline of a GreenMIM-Twins model: the same backbone run densely on
    every token (mmpretrain's SVT forward from stage 0's embedding on), a learned mask token in
    place of the masked units' stage-0 embeddings; the same mask draw, decoder (fed the visible
    units' latents) and loss."""

    def __init__(self, greenmim):
        super().__init__()
        self.inner = greenmim
        self.mask_token = torch.nn.Parameter(
            torch.zeros(1, 1, greenmim.backbone.embed_dims[0]).normal_(std=0.02))

    def loss(self, img, data_samples=None):
        from greenmim_mm.models.algorithms.greenmim import masked_cell_loss
        from greenmim_mm.ops import upsample_mask
        m, bb = self.inner, self.inner.backbone
        mask = m.next_mask(img.shape[-2:])
        x, hw = bb.patch_embeds[0](img)
        hidden = upsample_mask(mask, bb.mask_unit // bb.patch_stride).reshape(1, -1, 1)
        x = torch.where(hidden.to(x.device, non_blocking=True), self.mask_token.to(x.dtype), x)
        for i in range(bb.num_stage):
            if i > 0:
                x, hw = bb.patch_embeds[i](x)
            x = bb.position_encoding_drops[i](x)
            for j, layer in enumerate(bb.stages[i]):
                x = layer(x, hw)
                if j == 0:
                    x = bb.position_encodings[i](x, hw)
            x = getattr(bb, f'norm_after_stage{i}')(x)
            if i < bb.num_stage - 1:
                x = x.reshape(x.shape[0], *hw, -1).permute(0, 3, 1, 2)
        from greenmim_mm.models.necks.grid_decoder import visible_cell_index
        latent = x.index_select(1, visible_cell_index(mask).to(x.device, non_blocking=True))
        return dict(loss=masked_cell_loss(m.neck, m.head, latent, img, mask))


def make_batch(kind, ratio, args, gen):
    """Images (B, 3, H, W) and, for SimMIM, per-sample masks on its 4-px patch grid from
    mmpretrain's ``SimMIMMaskGenerator`` (seeded through numpy's global generator)."""
    from mmpretrain.datasets.transforms import SimMIMMaskGenerator
    from mmpretrain.structures import DataSample
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen).to(args.device)
    samples = []
    if kind == 'simmim':
        np.random.seed(int(torch.randint(2**31, (1, ), generator=gen)))
        masker = SimMIMMaskGenerator(input_size=args.img_size, mask_patch_size=32,
                                     model_patch_size=4, mask_ratio=ratio)
        for _ in range(args.batch):
            m = torch.from_numpy(masker.transform({})['mask']).float()
            samples.append(DataSample().set_mask(m.to(args.device)))
    return x, samples


def make_step(model, args):
    """A closure running forward + backward + AdamW step on a batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    amp = torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16, enabled=args.amp)

    def step(x, samples):
        with amp:
            loss = model.loss(x, samples)['loss']
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_all(args):
    """Alternate one step of each model per round; return {name: [seconds per step]}."""
    gen = torch.Generator().manual_seed(0)
    runs = []
    for name, kind, ratio, backend in variants(args):
        model = build(kind, ratio, backend, args)
        runs.append((name, make_step(model, args), make_batch(kind, ratio, args, gen)))
    times = {name: [] for name, _, _ in runs}
    for r in range(args.warmup + args.iters):
        for name, step, batch in runs:
            sync(args.device)
            t0 = time.perf_counter()
            step(*batch)
            sync(args.device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def gflop_per_image(args, name):
    """GFLOP of one training step's forward + backward per image (``FlopCounterMode`` on the
    meta device: no compute, the same shapes and ops as the timed model)."""
    import argparse as _argparse
    from torch.utils.flop_counter import FlopCounterMode
    kind, ratio, backend = next(v[1:] for v in variants(args) if v[0] == name)
    kind = 'greenmim' if kind == 'greenmim-compiled' else kind  # the same FLOPs, eager on meta
    meta = _argparse.Namespace(**dict(vars(args), device='meta', amp=False))
    model = build(kind, ratio, backend, meta)
    x, samples = make_batch(kind, ratio, meta, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model.loss(x, samples)['loss'].backward()
    return counter.get_total_flops() / args.batch / 1e9


def peak_memory(args, name):
    """Peak memory (MiB) of one model's training steps."""
    kind, ratio, backend = next(v[1:] for v in variants(args) if v[0] == name)
    if args.device.startswith('cuda'):
        gen = torch.Generator().manual_seed(0)
        model = build(kind, ratio, backend, args)
        step, batch = make_step(model, args), make_batch(kind, ratio, args, gen)
        step(*batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(*batch)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, '--only', name] + [a for a in sys.argv[1:] if a != '--only']
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_kib(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def child_memory(args):
    """CPU child: peak resident-set growth (MiB) over two steps of the model named by ``--only``
    (after one warm-up step; Linux's peak RSS is reset through /proc/self/clear_refs)."""
    kind, ratio, backend = next(v[1:] for v in variants(args) if v[0] == args.only)
    gen = torch.Generator().manual_seed(0)
    model = build(kind, ratio, backend, args)
    step, batch = make_step(model, args), make_batch(kind, ratio, args, gen)
    step(*batch)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    base = _status_kib('VmRSS')
    for _ in range(2):
        step(*batch)
    print((_status_kib('VmHWM') - base) / 1024)


def report(args, times, memory, gflop=None):
    """Print the table and the ratios; return the rows."""
    gflop = gflop or {}
    if args.backbone == 'twins':
        return report_twins(args, times, memory, gflop)
    med = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    print(f'\nSwin-{args.arch} @{args.img_size}px, batch {args.batch}, device {args.device}, '
          f'{"bf16 AMP" if args.amp else "fp32"}, {args.iters} alternating rounds '
          f'(median step = forward + backward + AdamW)')
    print(f'{"model":24s} {"step ms":>9s} {"img/s":>8s} {"GFLOP/img":>9s} {"GFLOP/s":>8s} '
          f'{"peak MiB":>9s} {"speed vs SimMIM r0.6":>21s} {"vs SimMIM r0.75":>16s} '
          f'{"memory vs r0.6":>15s}')
    for name in med:
        ips = args.batch / med[name]
        row = dict(model=name, step_ms=med[name] * 1e3, img_per_s=ips, peak_mib=memory[name],
                   speedup_vs_simmim_own=med['SimMIM r0.6'] / med[name],
                   speedup_vs_simmim_075=med['SimMIM r0.75'] / med[name],
                   memory_vs_simmim_own=_ratio(memory[name], memory['SimMIM r0.6']))
        row.update(flop_columns(gflop.get(name), ips))
        rows.append(row)
        print(f'{name:24s} {row["step_ms"]:9.1f} {ips:8.2f} {_fmt(row["gflop_per_img"])} '
              f'{_fmt(row["achieved_gflop_s"], 8)} {_fmt(memory[name], 9, 0)} '
              f'{row["speedup_vs_simmim_own"]:20.2f}x {row["speedup_vs_simmim_075"]:15.2f}x '
              f'{_fmt(row["memory_vs_simmim_own"], 14, 2)}x')
    return rows


def flop_columns(gflop, img_per_s):
    """GFLOP per image and achieved GFLOP/s (None when not counted)."""
    return dict(gflop_per_img=gflop, achieved_gflop_s=None if gflop is None else gflop * img_per_s)


def _fmt(value, width=9, digits=1):
    return f'{value:{width}.{digits}f}' if value is not None else f'{"-":>{width}s}'


def _ratio(a, b):
    return None if a is None or b is None else a / max(b, 1e-9)


def report_twins(args, times, memory, gflop=None):
    """Twins table: every model against the dense baseline (the first variant)."""
    med = {n: statistics.median(t) for n, t in times.items()}
    base = next(iter(med))
    print(f'\nTwins-SVT-{args.arch} @{args.img_size}px, batch {args.batch}, device '
          f'{args.device}, {"bf16 AMP" if args.amp else "fp32"}, {args.iters} alternating rounds '
          f'(median step = forward + backward + AdamW), mask ratio {GREENMIM_RATIO}')
    gflop = gflop or {}
    print(f'{"model":28s} {"step ms":>9s} {"img/s":>8s} {"GFLOP/img":>9s} {"GFLOP/s":>8s} '
          f'{"peak MiB":>9s} {"speed vs dense":>15s} {"memory vs dense":>16s}')
    rows = []
    for name in med:
        row = dict(model=name, step_ms=med[name] * 1e3, img_per_s=args.batch / med[name],
                   peak_mib=memory[name], speedup_vs_dense=med[base] / med[name],
                   memory_vs_dense=_ratio(memory[name], memory[base]))
        row.update(flop_columns(gflop.get(name), row['img_per_s']))
        rows.append(row)
        print(f'{name:28s} {row["step_ms"]:9.1f} {row["img_per_s"]:8.2f} '
              f'{_fmt(row["gflop_per_img"])} {_fmt(row["achieved_gflop_s"], 8)} '
              f'{_fmt(memory[name], 9, 0)} '
              f'{row["speedup_vs_dense"]:14.2f}x {_fmt(row["memory_vs_dense"], 15, 2)}x')
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.arch is None:
        args.arch = 'small' if args.backbone == 'twins' else 'tiny'
    if args.backbone == 'twins' and args.arch not in TWINS_LAST:
        raise SystemExit(f'--arch {args.arch}: Twins archs are {sorted(TWINS_LAST)}')
    if args.device == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)  # all cores unless OMP_NUM_THREADS says
    if args.only:
        return child_memory(args)
    times = time_all(args)
    memory = {name: None if args.no_memory else peak_memory(args, name) for name in times}
    gflop = {} if args.no_flops else {name: gflop_per_image(args, name) for name in times}
    rows = report(args, times, memory, gflop)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
