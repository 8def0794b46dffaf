"""Where a server may go: the one location rule.

A customer or operator names a region of the server's plan (``products.<id>.regions``)
or ``random``. The API, the CLI and the planner all ask :func:`check` before recording
a choice, and the lifecycle asks :func:`resolve` for the concrete region when a rebuild
starts: ``random`` means any region of the plan other than the current one (the point of
a rebuild is a new address), or the only region there is. A choice recorded earlier and
no longer offered (the operator changed the plan) is refused by :func:`check`;
:func:`resolve` falls back to ``random`` for it so a scheduled rebuild never sticks.
"""

from __future__ import annotations

import random

from provisioner.settings.schema import Product

RANDOM = "random"

_RNG = random.Random()  # noqa: S311 - spreading servers, not crypto


class LocationRefused(ValueError):
    """A location the plan does not offer (the message lists what it does)."""


def choices(product: Product | None) -> list[str]:
    """What may be asked for, in the plan's order: its regions, then ``random``."""
    return [*(product.regions if product else ()), RANDOM]


def check(product: Product | None, wanted: str) -> str:
    """``wanted`` if the plan offers it (or it is ``random``), else :class:`LocationRefused`."""
    if wanted == RANDOM or (product is not None and wanted in product.regions):
        return wanted
    raise LocationRefused(f"'{wanted}' is not a location of this plan; choose one of {', '.join(choices(product))}")


def resolve(product: Product, wanted: str | None, current: str | None,
            rng: random.Random | None = None) -> tuple[str, str | None]:
    """The concrete region a rebuild goes to, and a note when ``wanted`` had to be replaced."""
    note = None
    if wanted not in (None, "", RANDOM) and wanted not in product.regions:
        note = f"location {wanted!r} is no longer offered by this plan; going to a random one"
        wanted = RANDOM
    if wanted in (None, "", RANDOM):
        others = [r for r in product.regions if r != current] or list(product.regions)
        return (rng or _RNG).choice(others), note
    assert wanted is not None
    return wanted, note
