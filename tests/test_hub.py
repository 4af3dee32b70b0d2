"""hub.py: hub ids in `ScoreSdeVePipeline.from_pretrained`, read offline from a huggingface_hub
cache laid out in a temporary HF_HOME as huggingface_hub lays it out (blobs, snapshots, refs)."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import hub
import pipelines
from conftest import ROOT
from test_pipelines import _scheduler, tiny_ncsnpp

REPO_ID = 'google/ncsnpp-celebahq-256'
COMMIT = '0123456789abcdef0123456789abcdef01234567'


def _cache_repo(hf_home, repo_id, folder):
  """Put `folder` into the cache under HF_HOME as revision 'main' of `repo_id`: files in
  blobs/<sha256>, relative symlinks to them in snapshots/<commit>/, the commit in refs/main."""
  repo_dir = hf_home / 'hub' / ('models--' + repo_id.replace('/', '--'))
  (repo_dir / 'refs').mkdir(parents=True)
  (repo_dir / 'refs' / 'main').write_text(COMMIT)
  (repo_dir / 'blobs').mkdir()
  snapshot = repo_dir / 'snapshots' / COMMIT
  for path in sorted(folder.rglob('*')):
    if path.is_file():
      data = path.read_bytes()
      blob = repo_dir / 'blobs' / hashlib.sha256(data).hexdigest()
      blob.write_bytes(data)
      link = snapshot / path.relative_to(folder)
      link.parent.mkdir(parents=True, exist_ok=True)
      link.symlink_to(os.path.relpath(blob, link.parent))
  return snapshot


# Run in a fresh interpreter: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported.
_OFFLINE_SCRIPT = textwrap.dedent('''
  import json, sys, torch
  sys.path.insert(0, sys.argv[1])
  import pipelines
  out = {}
  def images(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=3, output_type='np',
                generator=torch.Generator().manual_seed(0)).images
  by_id = pipelines.ScoreSdeVePipeline.from_pretrained('google/ncsnpp-celebahq-256')
  by_folder = pipelines.ScoreSdeVePipeline.from_pretrained(sys.argv[2])
  out['same_images'] = bool((images(by_id) == images(by_folder)).all())
  out['same_weights'] = all(torch.equal(a, b) for a, b in
                            zip(by_id.unet.state_dict().values(), by_folder.unet.state_dict().values()))
  out['scheduler'] = dict(pipelines.ScoreSdeVeScheduler.from_pretrained(
    'google/ncsnpp-celebahq-256', subfolder='scheduler').config)
  try:
    pipelines.ScoreSdeVePipeline.from_pretrained('google/not-in-the-cache')
  except FileNotFoundError as e:
    out['error'] = str(e)
  print(json.dumps(out))
''')


def test_hub_id_reads_the_cache_offline(tmp_path):
  folder = tmp_path / 'pipeline'
  scheduler = _scheduler(correct_steps=2)
  pipelines.ScoreSdeVePipeline(tiny_ncsnpp(), scheduler).save_pretrained(folder)
  hf_home = tmp_path / 'hf_home'
  _cache_repo(hf_home, REPO_ID, folder)
  env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
  env.pop('HF_HUB_CACHE', None)
  result = subprocess.run([sys.executable, '-c', _OFFLINE_SCRIPT, str(ROOT), str(folder)],
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['same_weights'] and out['same_images']
  assert out['scheduler'] == dict(scheduler.config)
  message = out['error']
  print('\n' + message)
  for part in ("'google/not-in-the-cache'", 'HF_HUB_OFFLINE', 'local_dir=', 'from_pretrained(',
               str(hf_home / 'hub')):
    assert part in message, part


def test_without_huggingface_hub_the_error_says_what_to_do(monkeypatch):
  monkeypatch.setitem(sys.modules, 'huggingface_hub', None)  # import raises ImportError
  with pytest.raises(ImportError, match=r"(?s)'google/ncsnpp-celebahq-256'.*pip install "
                     r"huggingface_hub.*local folder"):
    pipelines.ScoreSdeVePipeline.from_pretrained(REPO_ID)


def test_folders_and_ids():
  assert hub.looks_like_hub_id('google/ncsnpp-celebahq-256')
  assert hub.looks_like_hub_id('org/name.v2_x')
  for not_an_id in ('/abs/path', './rel/path', '../up/path', 'a/b/c', 'noslash', 'a/', 'a/..'):
    assert not hub.looks_like_hub_id(not_an_id), not_an_id
  assert hub.resolve_folder(str(ROOT)) == str(ROOT)
  with pytest.raises(FileNotFoundError, match='neither a folder'):
    hub.resolve_folder('/no/such/folder')
  # a missing folder that cannot be a hub id keeps the loader's own message
  with pytest.raises(FileNotFoundError, match='is not a folder'):
    pipelines.ScoreSdeVePipeline.from_pretrained('/no/such/folder')


def test_unreachable_hub_error(tmp_path):
  """Online mode, but the hub does not answer (a closed local port): the error names the id,
  HF_HUB_OFFLINE and the local-folder way."""
  script = ('import sys; sys.path.insert(0, sys.argv[1]); import pipelines\n'
            'try:\n  pipelines.ScoreSdeVePipeline.from_pretrained("google/ncsnpp-celebahq-256")\n'
            'except FileNotFoundError as e:\n  print(e)\n')
  env = dict(os.environ, HF_HOME=str(tmp_path), HF_ENDPOINT='http://127.0.0.1:9')
  env.pop('HF_HUB_OFFLINE', None)
  env.pop('HF_HUB_CACHE', None)
  result = subprocess.run([sys.executable, '-c', script, str(ROOT)], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  for part in ("'google/ncsnpp-celebahq-256'", 'could not be reached', 'HF_HUB_OFFLINE unset',
               'local_dir='):
    assert part in result.stdout, (part, result.stdout)
