"""score_sde_pytorch's `utils` names, kept so that its notebooks and scripts run unchanged:
`restore_checkpoint(ckpt_path, state, device)` and `save_checkpoint(ckpt_dir, state)`.

They live in `checkpoints.py` (checkpoint files, building and loading models) with the rest of a
run on disk in `workdir.py` (layout, config.json, atomic writes); import from there in new code.
"""
from checkpoints import restore_checkpoint, save_checkpoint  # noqa: F401
