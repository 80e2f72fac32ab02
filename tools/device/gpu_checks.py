"""GPU checks of greenmim_mm, one section at a time (run by run_gpu_checks.sh; also runs on the
CPU at tiny sizes as a rehearsal: tests/test_device_rehearsal.py; docs/gpu.md). Every section merges its result into $OUT/results.json as
soon as it ends, so a later crash or timeout keeps what was measured.

Sections, in the order of their value:
  env        versions, GPU, flex availability
  correct    fp32 sparse (sdpa, flex) vs the tests' dense reference (fp64 on the CPU), outputs and
             parameter gradients (bias tables included); flex's backward only where it exists
             (CUDA; on the CPU the record says why it was skipped); flex vs sdpa under bf16
             autocast; a bf16 GreenMIM step gives a finite loss
  sync       SyncAudit (greenmim_mm.engine.sync_audit) of a GreenMIM step on the meta device
             (any machine); on CUDA one bf16 step under torch.cuda.set_sync_debug_mode('warn')
             (every synchronising call, with its Python line) and a profiler count of sync calls
  bench224   tools/benchmark.py, Swin-B 224, bf16, batch 128: SimMIM r0.6/r0.75 vs GreenMIM sdpa
             (run A), then the same plus flex (run B); images/s, peak memory, ratios, TFLOP/s
  profile    torch.profiler on 3 GreenMIM steps (sdpa, flex): top kernels, GPU busy fraction,
             kernels per step, CPU plan time per step
  bench192   as bench224 at 192 px (window 6)
  flexmicro  stage-0 window attention alone, fwd+bwd, sdpa vs flex, bias table with/without grad
  compile    tools/benchmark.py --compile (the compiled step, where the benchmark has that flag;
             otherwise the record says it was skipped and why)

The second benchmark size is 192/224 of --img rounded down to a multiple of 32; the Swin window
is the last stage's map (img / 32: 7 at 224, 6 at 192). GFLOP per image come from the
benchmark's own FLOP count (FlopCounterMode on the meta device), achieved TFLOP/s from them.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch

ROOT = os.getcwd()
sys.path[:0] = [os.path.join(ROOT, 'tools'), os.path.join(ROOT, 'tests')]
OUT = os.environ.get('OUT', 'device_out')


def args_parser():
    p = argparse.ArgumentParser()
    p.add_argument('--sections', nargs='+', required=True)
    p.add_argument('--device', default='cuda')
    p.add_argument('--arch', default='base')
    p.add_argument('--img', type=int, default=224, help='first bench size (second: 192)')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--start', type=float, default=None, help='epoch seconds the script started')
    p.add_argument('--deadline', type=float, default=540)
    return p


A = None


def remaining():
    return A.deadline - (time.time() - (A.start or T0))


def results_path():
    return os.path.join(OUT, 'results.json')


def save(name, value):
    res = {}
    if os.path.exists(results_path()):
        with open(results_path()) as f:
            res = json.load(f)
    res[name] = value
    with open(results_path(), 'w') as f:
        json.dump(res, f, indent=1, default=str)


def section(name, fn):
    t0 = time.time()
    print(f'\n######## {name} ({remaining():.0f} s left)', flush=True)
    try:
        value = dict(ok=True, **(fn() or {}))
    except BaseException as e:  # noqa: BLE001 (KeyboardInterrupt/SystemExit of a tool too)
        value = dict(ok=False, error=f'{type(e).__name__}: {e}'[:3000],
                     trace=traceback.format_exc()[-6000:])
        print(f'[{name}] FAILED {type(e).__name__}: {str(e)[:500]}', flush=True)
    value['seconds'] = round(time.time() - t0, 1)
    save(name, value)
    print(f'[{name}] {json.dumps(value, default=str)[:3000]}', flush=True)


def cuda():
    return A.device.startswith('cuda')


def sync_dev():
    if cuda():
        torch.cuda.synchronize()


def bench_ns(arch, img, batch, window=None, device=None, amp=True):
    return argparse.Namespace(backbone='swin', arch=arch, img_size=img, window=window or img // 32,
                              device=device or A.device, batch=batch, amp=amp)


def warm_greenmim(backend, ns, steps):
    """A GreenMIM benchmark model, its step closure and batch, after ``steps`` warm-up steps."""
    import benchmark
    m = benchmark.build('greenmim', 0.75, backend, ns)
    step = benchmark.make_step(m, ns)
    batch = benchmark.make_batch('greenmim', 0.75, ns, torch.Generator().manual_seed(0))
    for _ in range(steps):
        step(*batch)
    sync_dev()
    return m, step, batch


def second_size(img):
    """192/224 of ``img``, a multiple of 32 (192 for 224)."""
    return max(64, img * 192 // 224 // 32 * 32)


# --------------------------------------------------------------------------------- sections
def s_env():
    import platform
    info = dict(python=platform.python_version(), torch=torch.__version__,
                cuda=torch.version.cuda, device=A.device)
    if cuda():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f'{p.major}.{p.minor}', mem_gib=round(p.total_memory / 2**30, 1),
                    sms=p.multi_processor_count)
    for mod in ('mmengine', 'mmcv', 'mmpretrain', 'numpy', 'triton', 'torchvision'):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info[mod] = f'missing: {e}'
    import greenmim_mm  # noqa: F401
    from greenmim_mm.ops import flex_available
    info['flex_available'] = flex_available()
    return info


def s_correct():
    """fp32 sparse vs the tests' dense reference (fp64, CPU), outputs and gradients."""
    import test_green_swin as tg
    dev = torch.device(A.device)
    out = collections.defaultdict(float)
    backends = ['sdpa', 'flex']
    size = 224 if cuda() else A.img   # the rehearsal's size on the CPU
    ref_model = tg.make_model(size, size // 32, None, torch.float64)  # TINY arch, 4 outputs
    model = tg.make_model(size, size // 32, None, torch.float32).to(dev)
    x64 = torch.randn(2, 3, size, size, dtype=torch.float64)
    if not cuda():
        out['flex_backward'] = (f'skipped: torch {torch.__version__} has no CPU backward for '
                                f'FlexAttention (forward checked under no_grad)')
    for seed in range(3 if cuda() else 1):
        mask = tg.make_mask(size, 0.75, seed)
        with torch.no_grad():
            ref = tg.reference_sparse(ref_model, x64, mask)
        weights = [torch.randn_like(r) for r in ref]
        ref_model.zero_grad()
        sum((o * w).sum() for o, w in zip(tg.reference_sparse(ref_model, x64, mask), weights)).backward()
        ref_g = {n: p.grad.clone() for n, p in ref_model.named_parameters()}
        for be in backends:
            if be == 'flex' and not cuda():
                with torch.no_grad():   # FlexAttention has no backward on the CPU
                    model.attn_backend = be
                    o = model(x64.float().to(dev), mask=mask)
                out['flex_fwd_vs_dense_fp32'] = max(out['flex_fwd_vs_dense_fp32'], max(
                    (a.double().cpu() - b).abs().max().item() for a, b in zip(o, ref)))
                continue
            model.attn_backend = be
            model.zero_grad()
            o = model(x64.float().to(dev), mask=mask)
            sum((a * w.float().to(dev)).sum() for a, w in zip(o, weights)).backward()
            d_out = max((a.double().cpu() - b).abs().max().item() for a, b in zip(o, ref))
            d_grad = max(((p.grad.double().cpu() - ref_g[n]).abs().max() /
                          ref_g[n].abs().max().clamp_min(1e-12)).item()
                         for n, p in model.named_parameters())
            d_table = max(((p.grad.double().cpu() - ref_g[n]).abs().max() /
                           ref_g[n].abs().max().clamp_min(1e-12)).item()
                          for n, p in model.named_parameters() if 'relative_position_bias' in n)
            zero_tables = sum(int(p.grad.abs().sum() == 0) for n, p in model.named_parameters()
                              if 'relative_position_bias' in n)
            out[f'{be}_out_vs_dense_fp32'] = max(out[f'{be}_out_vs_dense_fp32'], d_out)
            out[f'{be}_grad_rel_vs_dense_fp32'] = max(out[f'{be}_grad_rel_vs_dense_fp32'], d_grad)
            out[f'{be}_bias_table_grad_rel'] = max(out[f'{be}_bias_table_grad_rel'], d_table)
            out[f'{be}_bias_tables_without_grad'] = max(out[f'{be}_bias_tables_without_grad'],
                                                        zero_tables)
    # bf16 autocast: flex vs sdpa (outputs relative to their scale)
    if cuda():
        x = torch.randn(2, 3, 224, 224, device=dev)
        mask = tg.make_mask(224, 0.75, 7)
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            model.attn_backend = 'sdpa'
            s = model(x, mask=mask)
            model.attn_backend = 'flex'
            f = model(x, mask=mask)
        out['flex_vs_sdpa_bf16_rel'] = max(((a.float() - b.float()).abs().max() /
                                            b.float().abs().max()).item() for a, b in zip(f, s))
    # a bf16 GreenMIM training step is finite (Swin-T, batch 8)
    import benchmark
    for be in (backends if cuda() else ['sdpa']):
        ns = bench_ns('tiny' if cuda() else A.arch, 224 if cuda() else A.img, 8 if cuda() else 2)
        m = benchmark.build('greenmim', 0.75, be, ns)
        step = benchmark.make_step(m, ns)
        batch = benchmark.make_batch('greenmim', 0.75, ns, torch.Generator().manual_seed(0))
        losses = [float(step(*batch)) for _ in range(3)]
        out[f'greenmim_step_bf16_{be}_losses'] = losses
        out[f'greenmim_step_bf16_{be}_finite'] = all(map(lambda v: v == v and abs(v) < 1e30, losses))
    tol_ok = out['sdpa_out_vs_dense_fp32'] <= 1e-4 and (not cuda() or out['flex_out_vs_dense_fp32'] <= 1e-4)
    out['PASS'] = bool(tol_ok and all(v for k, v in out.items() if k.endswith('_finite'))
                       and out.get('flex_bias_tables_without_grad', 0) == 0)
    return dict(out)


def s_sync():
    import benchmark
    from greenmim_mm.engine.sync_audit import SyncAudit
    res = {}
    # device-independent: every synchronising ATen call of an fp32 step on the meta device
    meta = bench_ns(A.arch, A.img, 2, device='meta', amp=False)
    m = benchmark.build('greenmim', 0.75, 'sdpa', meta)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, samples = benchmark.make_batch('greenmim', 0.75, meta, torch.Generator().manual_seed(0))

    def meta_step():   # benchmark.make_step's step without autocast (none on meta)
        m.loss(x, samples)['loss'].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with SyncAudit():
        meta_step()
    with SyncAudit() as audit:
        meta_step()
    res['meta_audit'] = dict(events=audit.counts(), where=audit.summary().splitlines()[:20])
    ns = bench_ns(A.arch, A.img, min(A.batch, 16))
    for be in (['sdpa', 'flex'] if cuda() else ['sdpa']):
        m, step, batch = warm_greenmim(be, ns, 2)
        hits = collections.Counter()
        if cuda():
            torch.cuda.set_sync_debug_mode('warn')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            step(*batch)
        if cuda():
            torch.cuda.set_sync_debug_mode(0)
        for w in caught:
            if 'synchroniz' in str(w.message).lower():
                hits[f'{os.path.relpath(w.filename, ROOT) if ROOT in w.filename else w.filename.split("site-packages/")[-1]}:{w.lineno} {str(w.message)[:80]}'] += 1
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda() else [])
        with profile(activities=acts) as prof:
            step(*batch)
            sync_dev()
        names = collections.Counter(e.name for e in prof.events())
        res[be] = dict(sync_warnings=dict(hits), n_sync_warnings=sum(hits.values()),
                       profiler_sync_calls={k: v for k, v in names.items()
                                            if 'Synchronize' in k or k in ('cudaMemcpy', 'cudaFree')},
                       cudaMemcpyAsync=names.get('cudaMemcpyAsync', 0),
                       kernel_launches=sum(v for k, v in names.items() if k.startswith('cudaLaunchKernel')
                                           or k.startswith('cuLaunchKernel')))
    return res


def benchmark_has(flag):
    """Whether tools/benchmark.py accepts ``flag`` (e.g. '--compile', landed separately)."""
    import benchmark
    return flag in benchmark.parse_args.__code__.co_consts


GFLOP = {}  # (model, img) -> GFLOP per image, from the first benchmark run that counted it


def run_benchmark(img, backends, tag, extra=()):
    import benchmark
    path = os.path.join(tempfile.mkdtemp(), f'bench_{tag}.json')
    argv = ['--device', A.device, '--arch', A.arch, '--img-size', str(img), '--window',
            str(img // 32), '--batch', str(A.batch), '--iters', str(A.iters), '--warmup',
            str(A.warmup), '--backends', *backends, '--json', path, *extra]
    if not cuda():
        argv.append('--no-memory')   # the CPU measures memory in one child process per model
    counted = {m for m, i in GFLOP if i == img}
    names = {v[0] for v in benchmark.variants(benchmark.parse_args(argv))}
    if names <= counted:
        argv.append('--no-flops')
    if cuda():
        argv.append('--amp')
    saved = sys.argv
    sys.argv = ['benchmark.py'] + argv   # its CPU memory child re-reads sys.argv
    try:
        benchmark.main(argv)
    finally:
        sys.argv = saved
    with open(path) as f:
        rows = json.load(f)['rows']
    for r in rows:
        if r.get('gflop_per_img') is not None:
            GFLOP[(r['model'], img)] = r['gflop_per_img']
        g = GFLOP.get((r['model'], img))
        r['gflop_per_img'] = g
        r['achieved_tflops'] = g * r['img_per_s'] / 1e3 if g else None
    return dict(rows=rows, argv=' '.join(argv))


def s_bench(img, name):
    out = {}
    try:
        out['A_sdpa'] = run_benchmark(img, ['sdpa'], f'{img}_A')
    except BaseException as e:  # noqa: BLE001
        out['A_sdpa'] = dict(error=f'{type(e).__name__}: {e}'[:2000], trace=traceback.format_exc()[-3000:])
    save(name, dict(ok='error' not in out['A_sdpa'], partial=True, **out))
    if cuda() and remaining() > 60:
        try:
            out['B_sdpa_flex'] = run_benchmark(img, ['sdpa', 'flex'], f'{img}_B')
        except BaseException as e:  # noqa: BLE001
            out['B_sdpa_flex'] = dict(error=f'{type(e).__name__}: {e}'[:2000],
                                      trace=traceback.format_exc()[-3000:])
    return out


def s_profile():
    import benchmark
    from torch.profiler import ProfilerActivity, profile
    ns = bench_ns(A.arch, A.img, A.batch)
    res = {}
    for be in (['sdpa', 'flex'] if cuda() else ['sdpa']):
        if remaining() < 45:
            res[be] = 'skipped: no time left'
            continue
        m, step, batch = warm_greenmim(be, ns, 3)
        t0 = time.perf_counter()
        for s in range(5):   # the step's plan (mask, geometry, packing), built off the step
            m.build_plan((100 + s, (A.img, A.img), torch.device(A.device), True, 0, 0))
        plan_ms = (time.perf_counter() - t0) / 5 * 1e3
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda() else [])
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(3):
                step(*batch)
            sync_dev()
        wall = (time.perf_counter() - t0) / 3
        ka = prof.key_averages()
        sort = 'self_cuda_time_total' if cuda() else 'self_cpu_time_total'
        with open(os.path.join(OUT, f'profile_{be}.txt'), 'w') as f:
            f.write(ka.table(sort_by=sort, row_limit=40))
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.device_time_total for e in kernels) if kernels else 0
        top = sorted(((a.key, a.self_device_time_total) for a in ka), key=lambda t: -t[1])[:12] \
            if cuda() else []
        res[be] = dict(step_ms_under_profiler=round(wall * 1e3, 1), cpu_plan_ms=round(plan_ms, 2),
                       kernels_per_step=len(kernels) // 3,
                       gpu_busy_fraction=round(busy_us / 3 / (wall * 1e6), 3) if kernels else None,
                       top_kernels_us=[(k[:70], round(v / 3)) for k, v in top])
    return res


def s_flexmicro():
    """Stage-0 window attention of Swin-B at 224 (C 128, 4 heads, window 7), fwd+bwd."""
    from greenmim_mm.ops import attention as att
    from greenmim_mm.ops.geometry import visible_coords
    from greenmim_mm.ops.masking import random_unit_mask, upsample_mask
    from greenmim_mm.ops.windows import build_window_plan
    if not cuda():
        return dict(skipped='flex has no backward on the CPU')
    dev, C, heads, w = torch.device('cuda'), 128, 4, 7
    coords = visible_coords(upsample_mask(random_unit_mask((7, 7), 0.75, torch.Generator().manual_seed(0)), 8).numpy())
    plans = {'sdpa': build_window_plan(coords, w, 3, C, 'optimal', 'padded').to(dev),
             'flex': build_window_plan(coords, w, 3, C, 'optimal', 'packed').to(dev)}
    n = len(coords)
    x = torch.randn(A.batch, n, C, device=dev, dtype=torch.bfloat16, requires_grad=True)
    qkv_w = torch.randn(3 * C, C, device=dev, dtype=torch.bfloat16) * C ** -0.5
    qkv_w.requires_grad_()
    res = {}
    for table_grad in (True, False):
        table = torch.randn((2 * w - 1) ** 2, heads, device=dev, requires_grad=table_grad)
        for be, plan in plans.items():
            fn = att.flex_window_attention if be == 'flex' else att.padded_window_attention

            def one():
                y = fn(x, plan, qkv_w, None, table, heads, (C // heads) ** -0.5)
                y.float().square().mean().backward()
            for _ in range(3):
                one()
            torch.cuda.synchronize()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            for _ in range(10):
                one()
            ev[1].record()
            torch.cuda.synchronize()
            res[f'{be}_table_grad_{table_grad}_ms'] = round(ev[0].elapsed_time(ev[1]) / 10, 3)
    return res


def s_compile():
    """tools/benchmark.py --compile at the first size (sdpa; flex too on CUDA), if it has it."""
    if not benchmark_has('--compile'):
        return dict(skipped='tools/benchmark.py has no --compile flag in this tree')
    if not cuda():  # inductor's CPU kernels take minutes to build: the rehearsal stays short
        return dict(skipped='compiled step on the CPU: covered by tests/test_compile_step.py')
    backends = ['sdpa', 'flex'] if cuda() else ['sdpa']
    return dict(compiled=run_benchmark(A.img, backends, f'{A.img}_compiled', ['--compile']))


T0 = time.time()


def main():
    global A
    A = args_parser().parse_args()
    os.makedirs(OUT, exist_ok=True)
    table = dict(env=s_env, correct=s_correct, sync=s_sync,
                 bench224=lambda: s_bench(A.img, 'bench224'), profile=s_profile,
                 bench192=lambda: s_bench(second_size(A.img), 'bench192'),
                 flexmicro=s_flexmicro, compile=s_compile)
    import greenmim_mm  # noqa: F401
    from mmengine.registry import init_default_scope
    init_default_scope('greenmim_mm')
    for name in A.sections:
        if remaining() < 15:
            save(name, dict(ok=False, skipped='deadline'))
            continue
        section(name, table[name])


if __name__ == '__main__':
    main()
