"""NCSN++ cont. (VE SDE) on CelebA-HQ 256x256 (sigma_max 348); official checkpoint
ve/celebahq_256_ncsnpp_continuous (Song et al. 2021 README). The LSUN bedroom config on
CelebA-HQ."""
from configs.ve.bedroom_ncsnpp_continuous import get_config as get_bedroom_config


def get_config():
  config = get_bedroom_config()
  data = config.data
  del data.category  # an LSUN scene; the official file has no such key
  data.dataset = 'CelebAHQ'
  data.tfrecords_path = '/home/yangsong/ncsc/celebahq/r08.tfrecords'
  config.model.sigma_max = 348.
  return config
