"""Settings: the schema of every key (:mod:`.schema`) and how a file plus the environment
become validated :class:`Settings` (:mod:`.load`)."""

from provisioner.settings.load import load_settings
from provisioner.settings.schema import ConfigError, Product, Settings

__all__ = ["ConfigError", "Product", "Settings", "load_settings"]
