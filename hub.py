"""Hugging Face Hub ids ('google/ncsnpp-celebahq-256') as diffusers users write them: resolved to a
folder of the huggingface_hub cache, so `pipelines.ScoreSdeVePipeline.from_pretrained(hub_id)`
runs as written.

huggingface_hub is optional (`pip install huggingface_hub`). It downloads into its cache
($HF_HOME/hub, default ~/.cache/huggingface/hub) once and afterwards reads from there; with
HF_HUB_OFFLINE=1 it only reads the cache. Without network, pass a local folder instead:
`huggingface_hub.snapshot_download(hub_id, local_dir=...)` on a machine that has network, then
`from_pretrained('/path/to/that/folder')`.
"""
import os
import re

# What scoresde reads from a ScoreSdeVe pipeline repository (diffusers_convert.load_pipeline_folder);
# the weights are fetched one format at a time, so a repository holding both is downloaded once.
CONFIG_FILES = ['*.json']
WEIGHT_FILES = (['unet/diffusion_pytorch_model.safetensors'], ['unet/diffusion_pytorch_model.bin'])

# A hub repository id as diffusers users write it: 'org/name' of letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*')


def looks_like_hub_id(text):
  """True when `text` has the form of a hub repository id ('org/name')."""
  return (isinstance(text, str) and bool(_HUB_ID.fullmatch(text)) and '..' not in text
          and not text.endswith('.'))


def _local_folder_hint(repo_id):
  folder = repo_id.split('/')[-1]
  return (f"Or pass a local folder: on a machine with network run huggingface_hub.snapshot_download("
          f"'{repo_id}', local_dir='{folder}'), copy that folder here and call "
          f"from_pretrained('/path/to/{folder}').")


def resolve_folder(name_or_path, revision=None, cache_dir=None, weights=True):
  """The local folder of a diffusers pipeline given as a folder or as a hub id.

  Args:
    name_or_path: an existing folder (returned as it is) or a hub id such as
      'google/ncsnpp-celebahq-256'.
    revision: branch, tag or commit of the hub repository (default 'main').
    cache_dir: huggingface_hub's cache folder (default $HF_HUB_CACHE or $HF_HOME/hub).
    weights: also fetch the UNet weights (safetensors, else .bin); False fetches the JSON files.
  Returns:
    The folder (a snapshot folder of the cache for a hub id).
  Raises:
    FileNotFoundError: neither a folder nor a hub id, or a hub id that is not cached when the hub
      cannot be used (HF_HUB_OFFLINE=1, no network); the message says how to pass a folder.
    ImportError: a hub id without huggingface_hub installed.
  """
  if os.path.isdir(name_or_path):
    return name_or_path
  if not looks_like_hub_id(name_or_path):
    raise FileNotFoundError(f'{name_or_path!r} is neither a folder (looked in {os.getcwd()}) nor '
                            "a Hugging Face Hub id of the form 'org/name'.")
  repo_id = name_or_path
  try:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import LocalEntryNotFoundError
  except ImportError:
    raise ImportError(f"{repo_id!r} is not a local folder, so it is read as a Hugging Face Hub id, "
                      'which needs the huggingface_hub package: pip install huggingface_hub. '
                      + _local_folder_hint(repo_id)) from None
  try:
    kwargs = dict(revision=revision, cache_dir=cache_dir)
    folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=CONFIG_FILES, **kwargs)
    for patterns in WEIGHT_FILES if weights else ():
      folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, **kwargs)
      if os.path.isfile(os.path.join(folder, patterns[0])):
        break
    return folder
  except LocalEntryNotFoundError as e:
    if constants.HF_HUB_OFFLINE:
      why = ('HF_HUB_OFFLINE is set, so huggingface_hub does not download. Unset HF_HUB_OFFLINE '
             'where the hub is reachable to download it into the cache once.')
    else:
      why = ('the hub could not be reached. Retry where it is (with HF_HUB_OFFLINE unset) to '
             'download it into the cache once.')
    raise FileNotFoundError(
      f'{repo_id!r} is not a local folder (looked in {os.getcwd()}), and as a Hugging Face Hub id '
      f'it is not in the huggingface_hub cache ({cache_dir or constants.HF_HUB_CACHE}): {why} '
      + _local_folder_hint(repo_id) + f'\n({type(e).__name__}: {e})') from e
