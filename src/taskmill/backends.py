"""Picking a backend class by URL scheme, imported only when its scheme is used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from taskmill.errors import ConfigurationError

__all__ = ["backend_class"]


def backend_class(backends: Mapping[str, str], url: str, what: str) -> type:
    """The class ``backends`` maps the URL's scheme to (``"module:Class"``); a clear error otherwise."""
    target = backends.get(urlsplit(url).scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(backends))
        raise ConfigurationError(f"unsupported {what} URL {url!r}; supported schemes: {known}")
    module_name, class_name = target.split(":")
    found: type = getattr(importlib.import_module(module_name), class_name)
    return found
