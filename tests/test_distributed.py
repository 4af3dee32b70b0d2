"""distributed.py: the process-group options each mode joins with, and the collectives'
single-process behaviour (two gloo processes run in test_train, test_sample_lib and
test_eval_lib)."""
import contextlib
import datetime

import pytest
import torch
import torch.distributed as dist

import distributed
import eval_lib
import sample_lib
from configs import load_config


def test_joining_passes_the_timeout(monkeypatch):
  calls = []
  monkeypatch.setenv('WORLD_SIZE', '2')
  monkeypatch.setattr(dist, 'is_initialized', lambda: False)
  monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append((backend, kw)))
  monkeypatch.setattr(dist, 'get_rank', lambda: 1)
  monkeypatch.setattr(dist, 'get_world_size', lambda: 2)
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  assert distributed.init_distributed(config, distributed.UNEVEN_WORK_TIMEOUT) == (1, 2, True)
  assert distributed.init_distributed(config) == (1, 2, True)
  assert calls == [('gloo', {'timeout': datetime.timedelta(hours=24)}), ('gloo', {})]


def test_evaluation_and_sampling_wait_longer_than_nccls_ten_minutes(monkeypatch, tmp_path):
  """Their ranks get unequal work (rounds split by rank, resumed runs), so a rank can wait at a
  barrier for a whole sampling round; training keeps torch's default timeout."""
  seen = []

  class Joined(Exception):
    pass

  @contextlib.contextmanager
  def record(config, timeout=None):
    seen.append(timeout)
    raise Joined
    yield  # noqa: unreachable (a generator)

  monkeypatch.setattr(distributed, 'process_group', record)
  monkeypatch.setattr(sample_lib, 'resolve_checkpoint', lambda workdir, ckpt: 'ckpt.pth')
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  for run in (lambda: eval_lib.evaluate(config, str(tmp_path)),
              lambda: sample_lib.sample(config, str(tmp_path))):
    with pytest.raises(Joined):
      run()
  assert seen == [distributed.UNEVEN_WORK_TIMEOUT] * 2
  assert distributed.UNEVEN_WORK_TIMEOUT >= datetime.timedelta(hours=1)


def test_collectives_in_one_process():
  assert distributed.gather_objects(('a', 1)) == [('a', 1)]
  assert distributed.all_ranks(True) is True and distributed.all_ranks(0) is False
  distributed.barrier()  # nothing to wait for
