"""Seeds of the project's independent random streams, derived from config.seed and integers that
name the stream (checkpoint, batch, image, step, ...), so that no two streams share a seed."""
import numpy as np

# Bumped when derive_seed's values change, so that folders of images or evaluation rounds drawn
# with another scheme are not extended with this one (sample_lib.identity, eval_lib.eval_identity).
SCHEME = 3  # 1 (unrecorded): plain SeedSequence; 2: length-prefixed words; 3: named streams

# Stream names: every caller passes derive_seed(seed, NAME, ...), so no two streams share a seed
# (seed is config.seed; the evaluation split's batches use config.seed + 1).
TRAINING_NOISE = 2 ** 40 + 1  # t / noise levels and z of the training loss
EVAL_LOSS_NOISE = 2 ** 40 + 2  # the evaluation loss during training, reseeded per evaluation
DATA_AUGMENTATION = 2 ** 40 + 3  # (epoch, position): flips and dequantization noise of an image
DATA_LOADER = 2 ** 40 + 4  # (epoch, rank): a DataLoader's own generator
EVAL_MODE_LOSS = 2 ** 40 + 5  # --mode eval: the loss over the test split
BITS_PER_DIM = 2 ** 40 + 6  # (checkpoint, batch): the likelihood's Hutchinson probes
SAMPLING_ROUND = 2 ** 40 + 7  # (checkpoint, round): an evaluation round's samples
IMAGE = 2 ** 40 + 8  # (k,): image k of --mode sample
INPUT_MASK = 2 ** 40 + 9  # (k,): the random mask of input image k (sample_tasks)
SNAPSHOT_SAMPLES = 2 ** 40 + 10  # (step, rank): a rank's samples of a training snapshot
CLASSIFIER_EVAL = 2 ** 40 + 11  # the classifier's test-accuracy noise, the same every evaluation


def derive_seed(*parts):
  """A 63-bit seed from non-negative integers below 2^64, e.g. (config.seed, checkpoint, batch).

  Distinct tuples give distinct inputs to numpy's SeedSequence: it pads with zeros and splits
  large integers into 32-bit words, so (3, 0) and (3,), or (3, 2^40 + 1) and (3, 1, 256), would
  give one seed; hence the count first and two words per part.
  """
  words = [len(parts)]
  for part in parts:
    if not 0 <= part < 2 ** 64:
      raise ValueError(f'Seed parts must be integers in [0, 2^64); got {part}.')
    words += [int(part) & 0xFFFFFFFF, int(part) >> 32]
  return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)
