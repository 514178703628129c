"""Settings: one frozen msgspec Struct, read from the environment (and an optional `.env`).

config/loading.py is the only module that reads `os.environ`. Each field maps to the upper-case
environment variable of the same name; a bad value fails at start naming the variable.
"""

from agent_service.config.loading import env_name, load_settings, read_env_file, settings_fields
from agent_service.config.settings import Settings

__all__ = ["Settings", "env_name", "load_settings", "read_env_file", "settings_fields"]
