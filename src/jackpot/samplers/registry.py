"""Sampler registry: every sampler, built-in or third-party, comes from the entry-point
group ``jackpot.samplers`` (after xarray's ``backends/plugins.py``)."""

from __future__ import annotations

import inspect
import warnings
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from jackpot.samplers.base import Sampler, SamplerParameterError

__all__ = ["ENTRY_POINT_GROUP", "available_samplers", "get_sampler", "sampler_parameters"]

ENTRY_POINT_GROUP = "jackpot.samplers"


@cache
def _load_all() -> dict[str, type[Sampler]]:
    """Load every entry point once; warn (not crash) on broken plugins and on duplicates."""
    found: dict[str, type[Sampler]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break jackpot
            warnings.warn(
                f"sampler plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            warnings.warn(
                f"sampler plugin {ep.name!r} ({ep.value}) is not a jackpot Sampler subclass; "
                "ignored",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if ep.name in found and found[ep.name] is not cls:
            warnings.warn(
                f"sampler name {ep.name!r} is registered twice; keeping {found[ep.name]!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        found[ep.name] = cls
    return found


def available_samplers() -> list[str]:
    """Sorted names of every installed sampler."""
    return sorted(_load_all())


def get_sampler(name: str, **params: Any) -> Sampler:
    """Build the sampler registered as ``name`` with keyword ``params``.

    An unknown name lists the installed samplers; an unknown parameter lists the accepted ones.
    """
    accepted = sampler_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SamplerParameterError(
            f"sampler {name!r} got unknown parameter(s) {unknown}; it accepts: "
            f"{', '.join(accepted) or 'no parameters'}"
        )
    return _load_all()[name](**params)


def sampler_parameters(name: str) -> list[str]:
    """Keyword parameters of the sampler registered as ``name``, read from its ``__init__``.

    An unknown name raises ``ValueError`` listing the installed samplers.
    """
    samplers = _load_all()
    if name not in samplers:
        installed = ", ".join(sorted(samplers)) or "none (is jackpot installed? pip install -e .)"
        raise ValueError(f"unknown sampler {name!r}; installed samplers: {installed}")
    return [
        p.name
        for p in inspect.signature(samplers[name].__init__).parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
