"""The installed distribution's version (pyproject is the one place it is written)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("trainyard")
except PackageNotFoundError:  # running from a checkout that was never pip-installed
    VERSION = "0+checkout"
