"""`provisioner demo` (what `make run` runs): the product on its embedded default.

SQLite, the sandbox clouds and a demo EDD storefront in the same SQLite file; no
credentials. On first start it makes the sandbox's own secrets under var/secrets/ (a Fernet
key and the worker's SSH key), which is the one place this program writes secrets for you.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import tomllib
from pathlib import Path

log = logging.getLogger(__name__)


def prepare_local_secrets(config_file: str) -> None:
    """Create the secret files a sandbox config names, if they do not exist yet."""
    raw = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
    if not raw.get("sandbox", {}).get("enabled"):
        return
    keys = raw.get("secrets", {}).get("fernet_keys_file")
    if keys and not Path(keys).exists():
        from provisioner.secrets import generate_key

        _write_private(Path(keys), generate_key() + "\n")
        log.info("made a Fernet key for the sandbox in %s", keys)
    jwt = raw.get("api", {}).get("jwt_secret_file")
    if jwt and not Path(jwt).exists():
        import secrets

        _write_private(Path(jwt), secrets.token_urlsafe(48) + "\n")
    ssh_key = raw.get("ssh", {}).get("private_key_file")
    if ssh_key and not Path(ssh_key).exists():
        try:
            from provisioner.cloudinit import generate_client_key
        except ImportError:
            return
        key = generate_client_key()
        _write_private(Path(ssh_key), key.private_pem)
        Path(ssh_key + ".pub").write_text(key.public_line + "\n", encoding="utf-8")
        log.info("made the worker's SSH key for the sandbox in %s", ssh_key)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def run_demo(args: argparse.Namespace) -> int:
    from provisioner import db, display
    from provisioner.app import App
    from provisioner.cli import config_path
    from provisioner.settings import ConfigError, load_settings
    from provisioner.storefront.demo import seed_demo_storefront

    path = config_path(args)
    assert path is not None
    prepare_local_secrets(path)
    settings = load_settings(path)
    if not settings.sandbox.enabled:
        raise ConfigError(f"sandbox.enabled: `provisioner demo` runs only on a sandbox config, and {path} is not one")
    app = App(settings)
    db.upgrade(app.engine)
    edd_engine = db.make_engine(settings.storefront.edd_url)
    seed_demo_storefront(edd_engine, prefix=settings.storefront.edd_table_prefix,
                         now=dt.datetime.now(dt.UTC))
    result, error = app.plan_once()
    print(f"Provisioner demo — config {path}, database {db.safe_url(settings.database.url)}")
    print(display.plan_text(result))
    if error:
        print(f"provisioner: error: {error}")
        return 1
    return 0
