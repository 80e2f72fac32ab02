"""tools/benchmark.py runs end to end (timings are reported, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_reports_every_model_and_ratios(tmp_path):
    out = tmp_path / 'bench.json'
    run = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--arch', 'nano', '--batch', '1',
                          '--iters', '1', '--warmup', '0', '--json', str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {r['model']: r for r in json.loads(out.read_text())['rows']}
    assert set(rows) == {'SimMIM r0.6', 'SimMIM r0.75', 'GreenMIM r0.75 sdpa'}
    for r in rows.values():
        assert r['step_ms'] > 0 and r['img_per_s'] > 0 and r['peak_mib'] >= 0
    assert rows['SimMIM r0.6']['speedup_vs_simmim_own'] == 1.0
    assert 'speed vs SimMIM r0.6' in run.stdout


def test_benchmark_twins_reports_dense_baseline_and_ratios(tmp_path):
    out = tmp_path / 'bench_twins.json'
    run = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--backbone', 'twins',
                          '--arch', 'nano', '--img-size', '64', '--batch', '1', '--iters', '1',
                          '--warmup', '0', '--json', str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {r['model']: r for r in json.loads(out.read_text())['rows']}
    assert set(rows) == {'Twins dense r0.75', 'GreenMIM-Twins r0.75 sdpa'}
    assert rows['Twins dense r0.75']['speedup_vs_dense'] == 1.0
    assert all(r['step_ms'] > 0 and r['peak_mib'] >= 0 for r in rows.values())
    assert 'speed vs dense' in run.stdout
