from .defaults import _C as cfg
from .defaults import _C as cfg_test
from .loader import ConfigError, load_config, yes_no

__all__ = ["cfg", "cfg_test", "load_config", "ConfigError", "yes_no"]
