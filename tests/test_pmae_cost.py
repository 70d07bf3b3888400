"""bench/pmae_cost.py on a tiny row: the table, the JSON with provenance, and a FLOP ratio from chapter 11's count."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_tiny_row_prints_and_records_every_figure(tmp_path):
    out = tmp_path / 'cost.json'
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'pmae_cost.py'), '--data-root', str(tmp_path / 'none'), '--rows', 'micro:16:4',
                        '--batch', '8', '--rounds', '1', '--out', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    assert '| micro, 16x16, 4 |' in r.stdout
    saved = json.loads(out.read_text())
    row = saved['rows'][0]
    assert set(row['images_per_s']) == {'MAE_std', 'PMAE, full projection', 'PMAE, hidden-only'} and row['data'] == 'photos'
    assert row['flop_ratio'] > 1 and row['components'] == 3 * 16 * 16                   # PMAE's encoder reads every patch; a complete basis
    assert {'commit', 'device', 'threads', 'command'} <= set(saved['provenance'])
