"""A security model by name (xen9p_common.models.SECURITY_MODELS): the implementations of secmodel.py and mappedfile.py."""
from __future__ import annotations

from xen9p_common.models import SECURITY_MODELS

from .mappedfile import MappedFile
from .secmodel import MappedXattr, NoneModel, Passthrough

MODELS = {"passthrough": Passthrough, "none": NoneModel, "mapped-xattr": MappedXattr,
          "mapped": MappedXattr, "mapped-file": MappedFile}
assert set(MODELS) == set(SECURITY_MODELS), "a security model without an implementation (or the reverse)"


def make_model(name: str):
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown security model {name!r} (one of {', '.join(SECURITY_MODELS)})") from None
