"""NCSN++ cont. (VE SDE) on FFHQ 256x256 (sigma_max 348); official checkpoint
ve/ffhq_256_ncsnpp_continuous (Song et al. 2021 README). The CelebA-HQ 256 config on FFHQ."""
from configs.ve.celebahq_256_ncsnpp_continuous import get_config as get_celebahq_256_config


def get_config():
  config = get_celebahq_256_config()
  config.data.dataset = 'FFHQ'
  config.data.tfrecords_path = '/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords'
  return config
