"""The customer dashboard: a FastAPI app (JSON API + static page). See :mod:`dashboard_api.server`."""
