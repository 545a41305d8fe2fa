from .defaults import _C as cfg
from .defaults import _C as cfg_test
from .loader import ConfigError, Switches, check_choice, load_config, switches, yes_no

__all__ = ["cfg", "cfg_test", "load_config", "ConfigError", "check_choice", "yes_no", "switches",
           "Switches"]
