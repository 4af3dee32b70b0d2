"""bench/gpu_report.sh, the script that fills the README's GPU table, run end to end on the CPU
with a small network and batches (the environment variables it documents), so that a session
lent a GPU spends its minutes measuring, not debugging the script."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_report_runs_every_row_and_writes_the_table(tmp_path):
  env = dict(os.environ, DEVICE='cpu', CONFIGS='ve/digits_ncsnpp_continuous', TRAIN_BATCH='2',
             SAMPLE_BATCH='2', STEPS='1', COMPILE='0', OUT=str(tmp_path), OMP_NUM_THREADS='2',
             MEMORY_CONFIGS='ve/digits_ncsnpp_continuous', MEMORY_BATCH='2')
  run = subprocess.run(['bash', str(ROOT / 'bench' / 'gpu_report.sh')], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  assert 'no result' not in run.stdout, run.stdout[-2000:]
  names = ['train_fp32', 'train_bf16', 'sample_fp32', 'sample_bf16_nhwc']
  for name in names:
    result = json.loads((tmp_path / f'{name}_digits_ncsnpp_continuous.json').read_text())
    row, = result['rows']
    assert row['device'] == 'cpu' and row['batch'] == 2
    assert row['images_per_second'] > 0 and row['peak_memory_gb'] > 0
  table = (tmp_path / 'table.md').read_text().splitlines()
  assert table[0].startswith('| config | what | precision | channels_last | compile | Adam |')
  rows = [line.split(' | ') for line in table[2:]]
  # In the order measured: training fp32, bf16; sampling fp32, bf16 + channels_last.
  assert [(r[1], r[2], r[3]) for r in rows] == [
      ('training step', 'fp32', 'False'), ('training step', 'bf16', 'False'),
      ('sampling, dpm_solver 20 NFE', 'fp32', 'False'),
      ('sampling, dpm_solver 20 NFE', 'bf16', 'True')]
  assert all(float(r[7]) > 0 for r in rows)  # images/s
  # The memory rows: a real step's peak with and without checkpointing, beside the estimate.
  memory = json.loads((tmp_path / 'memory_digits_ncsnpp_continuous.json').read_text())['rows']
  assert [(r['precision'], r['checkpointing']) for r in memory] == [
      ('fp32', 'none'), ('fp32', 'blocks'), ('bf16', 'none'), ('bf16', 'blocks')]
  assert all(0 < r['peak_gib'] and r['batch'] == 2 for r in memory)
  assert memory[1]['peak_gib'] <= memory[0]['peak_gib']
  lines = (tmp_path / 'memory.md').read_text().splitlines()
  assert lines[0].startswith('| config | device | precision | checkpointing | batch | peak GiB |')
  assert len(lines) == 2 + len(memory)
