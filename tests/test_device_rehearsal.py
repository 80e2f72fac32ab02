"""Issue 18 item 6: the GPU run (tools/device/) rehearsed on the CPU at tiny sizes, so it cannot
rot: every section runs and records its result in results.json; the checks that need CUDA
(flex backward, the flex microbenchmark) record why they were skipped."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_rehearsal_of_the_gpu_run(tmp_path):
    out = tmp_path / 'out'
    env = dict(os.environ, OUT=str(out), DEADLINE='560', GROUP_TIMEOUTS='560 560 560',
               OMP_NUM_THREADS='1',
               PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}')
    run = subprocess.run(['bash', str(REPO / 'tools' / 'device' / 'run_gpu_checks.sh'),
                          '--device', 'cpu', '--arch', 'nano', '--img', '128', '--batch', '2',
                          '--iters', '1', '--warmup', '0'],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = (out / 'log.txt').read_text()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads((out / 'results.json').read_text())
    assert set(res) == {'env', 'correct', 'sync', 'bench224', 'profile', 'bench192',
                        'flexmicro', 'compile'}, log[-3000:]
    failed = {k: v.get('error') for k, v in res.items() if not v['ok']}
    assert not failed, failed
    correct = res['correct']
    assert correct['PASS'] and correct['sdpa_grad_rel_vs_dense_fp32'] < 1e-4
    assert correct['flex_fwd_vs_dense_fp32'] < 1e-4
    assert correct['flex_backward'].startswith('skipped: ')
    assert res['sync']['meta_audit']['events'] == {}
    for size in ('bench224', 'bench192'):
        rows = {r['model']: r for r in res[size]['A_sdpa']['rows']}
        assert set(rows) == {'SimMIM r0.6', 'SimMIM r0.75', 'GreenMIM r0.75 sdpa'}
        assert all(r['gflop_per_img'] > 0 and r['achieved_tflops'] > 0 for r in rows.values())
        assert rows['GreenMIM r0.75 sdpa']['gflop_per_img'] < rows['SimMIM r0.6']['gflop_per_img']
    assert res['bench192']['A_sdpa']['argv'].split()[5] == '96'   # --img-size 96 (192/224)
    assert res['profile']['sdpa']['cpu_plan_ms'] > 0
    assert 'skipped' in res['flexmicro']
    assert 'skipped' in res['compile'] or res['compile']['compiled']['rows']
