"""labkit: the from-scratch toolkit behind the efficient-LLM workbench.

Each module is one topic of the book. The most used entry points are re-exported
here so that a notebook can start with ``import labkit``.
"""

from labkit.config import Profile, get_profile
from labkit.device import default_device, describe_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "Profile",
    "get_profile",
    "default_device",
    "describe_device",
    "seed_everything",
    "__version__",
]
