"""Score networks. Importing this package registers every architecture with `models.utils`."""
from . import ddpm, ncsnpp, ncsnv2  # noqa: F401
