"""Seeds of the project's independent random streams, derived from config.seed and integers that
name the stream (checkpoint, batch, image, step, ...), so that no two streams share a seed."""
import numpy as np

# Stream names for derive_seed(config.seed, NAME, ...): integers no other caller passes first.
TRAINING_NOISE = 2 ** 40 + 1  # t / noise levels and z of the training loss
EVAL_LOSS_NOISE = 2 ** 40 + 2  # the evaluation loss during training, reseeded per evaluation


def derive_seed(*parts):
  """A 63-bit seed from non-negative integers, e.g. (config.seed, checkpoint, batch)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)
