"""notebooks/score_sde_demo.ipynb: committed without outputs, as notebooks/make_notebook.py writes
it, and executed top to bottom in its quick mode (SCORESDE_NOTEBOOK_QUICK=1) within 3 minutes."""
import json
import os
import re
import sys
import time

import pytest

from conftest import ROOT

nbformat = pytest.importorskip('nbformat', reason='the notebook tests need nbformat, nbclient and '
                               'ipykernel (requirements-dev.txt)')
NOTEBOOK = ROOT / 'notebooks' / 'score_sde_demo.ipynb'
TIME_LIMIT_S = 180


def test_committed_notebook_is_stripped_and_generated():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  markdown = [c for c in nb.cells if c.cell_type == 'markdown']
  assert all(not c.outputs and c.execution_count is None for c in code), 'outputs not stripped'
  assert len(markdown) >= 12 and all(c.source.startswith('#') for c in markdown[:1])
  headings = [line for c in markdown for line in c.source.splitlines() if line.startswith('## ')]
  assert len(headings) >= 11, headings
  sys.path.insert(0, str(NOTEBOOK.parent))
  try:
    import make_notebook
  finally:
    sys.path.remove(str(NOTEBOOK.parent))
  built = make_notebook.build()
  assert [(c.cell_type, c.source) for c in nb.cells] == [
    (c.cell_type, c.source) for c in built.cells], (
    'the notebook differs from what notebooks/make_notebook.py writes: rerun it')


def _kernel_for_this_python(tmp_path):
  """A kernelspec that runs ipykernel with the interpreter running the tests (not whatever
  'python' is first on PATH); JUPYTER_PATH makes jupyter_client find it."""
  pytest.importorskip('ipykernel')
  folder = tmp_path / 'jupyter' / 'kernels' / 'scoresde-test'
  folder.mkdir(parents=True)
  (folder / 'kernel.json').write_text(json.dumps({
    'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
    'display_name': 'scoresde test', 'language': 'python'}))
  return 'scoresde-test', str(tmp_path / 'jupyter')


def _outputs(nb, kind):
  texts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.output_type == 'stream' and kind == 'text':
        texts.append(out.text)
      elif out.output_type in ('display_data', 'execute_result') and kind in out.data:
        texts.append(out.data[kind])
  return texts


@pytest.mark.slow
def test_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
  nbclient = pytest.importorskip('nbclient')
  kernel_name, jupyter_path = _kernel_for_this_python(tmp_path)
  monkeypatch.setenv('JUPYTER_PATH', jupyter_path)
  monkeypatch.setenv('SCORESDE_NOTEBOOK_QUICK', '1')
  # The kernel's torch threads, as conftest sets them for the tests (2 threads on 2 busy cores
  # ran this notebook 10-20x slower than 1).
  monkeypatch.setenv('OMP_NUM_THREADS', os.environ.get('SCORESDE_TEST_THREADS', '1'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=TIME_LIMIT_S,
                                   resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
  seconds = time.perf_counter() - start
  text = ''.join(_outputs(nb, 'text'))
  print(f'\nnotebook ran in {seconds:.0f} s (quick mode)\n{text}')
  assert seconds < TIME_LIMIT_S
  assert 'quick mode: True' in text
  nfes = [int(n) for n in re.findall(r'NFE = (\d+)', text)]
  assert len(nfes) >= 6 and all(n > 0 for n in nfes), text  # PC, 2 ODE, 2 fast, bpd, decode
  assert 'DPM-Solver++ (2M): NFE = 10' in text
  bpd = float(re.search(r'bits/dim on \d+ test digits: ([\d.]+)', text)[1])
  assert 0.5 < bpd < 3, bpd
  assert 'Colorization skipped' in text
  # The pipeline draws the PC sampler's images (the digits model is centred: mapped from [-1, 1]).
  gap = float(re.search(r'max \|pipeline - PC sampler of section 3\| = ([-+.e\d]+)', text)[1])
  assert gap < 1e-5, gap
  assert len(_outputs(nb, 'image/png')) >= 12  # every step shows its picture
