"""Shared test wiring. Service-backed fixtures skip locally when the service is missing and
fail under CI=true (see tests/fixtures/services.py)."""

import os

# Tests never reach the real Cloudflare/Vultr, and env credentials must not leak into SDKs.
for _var in ("CLOUDFLARE_EMAIL", "CLOUDFLARE_API_KEY", "CLOUDFLARE_API_TOKEN", "VULTR_API_KEY",
             "PROVISIONER_CONFIG"):
    os.environ.pop(_var, None)

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.edd",
    "tests.fixtures.sandbox",
    "tests.fixtures.hosts",
    "tests.fixtures.stack",
    "tests.fixtures.shop",
    "tests.fixtures.browser",
    "tests.fixtures.wordpress",
    "tests.fixtures.machine",
    "tests.fixtures.netns",
]
