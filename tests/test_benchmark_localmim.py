"""tools/benchmark_localmim.py runs end to end (timings are reported, never asserted; the memory
pass, one child process per model as in tools/benchmark.py, is skipped to keep the test short)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_localmim_reports_every_model_and_ratios(tmp_path):
    out = tmp_path / 'bench.json'
    run = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark_localmim.py'),
                          '--arch', 'nano', '--img-size', '128', '--window', '4', '--batch', '1',
                          '--iters', '1', '--warmup', '0', '--no-memory', '--isolated',
                          '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {r['model']: r for r in json.loads(out.read_text())['rows']}
    assert set(rows) == {'GreenMIM', 'LocalMIM HOG', 'LocalMIM Pixel', 'LocalMIM HOG isolated'}
    for r in rows.values():
        assert r['step_ms'] > 0 and r['img_per_s'] > 0
    assert rows['GreenMIM']['time_vs_greenmim'] == 1.0
    assert 'time vs GreenMIM' in run.stdout
