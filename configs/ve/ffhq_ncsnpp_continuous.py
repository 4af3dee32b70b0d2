"""NCSN++ cont. (VE SDE) on FFHQ 1024x1024 (the official ve/ffhq_1024_ncsnpp_continuous
checkpoint): the CelebA-HQ 1024 config on FFHQ, with a per-dimension mean loss."""
from configs.ve.celebahq_ncsnpp_continuous import get_config as get_celebahq_config


def get_config():
  config = get_celebahq_config()
  config.training.reduce_mean = True
  config.data.dataset = 'FFHQ'
  config.data.tfrecords_path = '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'
  return config
