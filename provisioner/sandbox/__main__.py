"""SIMULATOR ONLY: ``python -m provisioner.sandbox`` runs the sandbox (see app.py)."""

import sys

from provisioner.sandbox.app import main

sys.exit(main())
