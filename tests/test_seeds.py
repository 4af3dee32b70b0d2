"""seeds.derive_seed: one seed per tuple of stream names, none shared."""
import itertools

import pytest

import seeds
from seeds import EVAL_LOSS_NOISE, TRAINING_NOISE, derive_seed


def test_distinct_tuples_give_distinct_seeds():
  # SeedSequence alone pads with zeros and splits integers >= 2^32 into words: these collided.
  assert derive_seed(3, 0) != derive_seed(3)
  assert derive_seed(3, 1, 0) != derive_seed(3, 1)
  assert derive_seed(3, 2 ** 40 + 1) != derive_seed(3, 1, 256)
  assert derive_seed(0, TRAINING_NOISE) != derive_seed(0, 1, 256)
  tuples = [t for n in range(4) for t in itertools.product((0, 1, 2, 256, 2 ** 32, 2 ** 63,
                                                            TRAINING_NOISE, EVAL_LOSS_NOISE),
                                                           repeat=n)]
  seeds = [derive_seed(*t) for t in tuples]
  assert len(set(seeds)) == len(tuples)
  assert all(0 <= s < 2 ** 63 for s in seeds) and derive_seed(7, 3) == derive_seed(7, 3)


def test_parts_must_be_64_bit_non_negative():
  with pytest.raises(ValueError, match=r'\[0, 2\^64\)'):
    derive_seed(1, -1)
  with pytest.raises(ValueError, match=r'\[0, 2\^64\)'):
    derive_seed(2 ** 64)


def test_stream_names_are_distinct():
  names = [getattr(seeds, n) for n in dir(seeds) if n.isupper() and n != 'SCHEME']
  assert len(names) == len(set(names)) >= 9 and all(v >= 2 ** 40 for v in names)
