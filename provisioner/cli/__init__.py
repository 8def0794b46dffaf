"""The face of the product: the ``provisioner`` command line, the demo supervisor and what
the operator reads (tables, health). The composition root: it may import everything below;
nothing imports it."""

from provisioner.cli.main import main

__all__ = ["main"]
