"""Import an optional monitoring package, or fail with the package named and the pip command."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from zerospeed.errors import ConfigError


class MissingPackageError(ConfigError, ImportError):
    """A config section is enabled but the package it writes through is not installed."""


def require(module: str, section: str, pip_spec: str | None = None) -> ModuleType:
    """Import `module` for config section `section`; raise MissingPackageError naming both if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing(module, section, pip_spec) from error


def check_installed(module: str, section: str, pip_spec: str | None = None) -> None:
    """Cheap presence check (no import) so every rank fails the same way as rank 0 would."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing(module, section, pip_spec)


def missing(module: str, section: str, pip_spec: str | None = None) -> MissingPackageError:
    spec = pip_spec or module
    return MissingPackageError(
        f"{section}.enabled is true but the '{module}' package is not installed; "
        f"install it with: pip install '{spec}' (or pip install 'zerospeed[monitors]'), "
        f"or set {section}.enabled to false"
    )
