"""The installed xen9p version: read from the package metadata, whose one source is setup.cfg."""
from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("xen9p")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
