"""DDPM (Ho et al. 2020) on CelebA-HQ 256x256: N = 1000 discrete VP steps, lr 2e-5.
The LSUN bedroom config on CelebA-HQ."""
from configs.vp.ddpm.bedroom import get_config as get_bedroom_config


def get_config():
  config = get_bedroom_config()
  data = config.data
  del data.category  # an LSUN scene; the official file has no such key
  data.dataset = 'CelebAHQ'
  data.tfrecords_path = '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'
  return config
