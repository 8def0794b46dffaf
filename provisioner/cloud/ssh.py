"""Pinned, key-only SSH to our servers: paramiko behind one thin seam.

The server's host key must equal the pin we generated for it (``SSHTarget.pinned_host_key``,
sent to the VPS in cloud-init user_data): the pin goes into this session's own ``HostKeys``
under paramiko's name (``host`` on port 22, else ``[host]:port``) with ``RejectPolicy``.
System known_hosts, agents and ``~/.ssh`` are never consulted; nothing is auto-added.

Errors: nothing from paramiko or ``socket`` escapes this module::

    SSHError                                  .transient: may a retry help?
    ├── SSHUnreachable      transient   refused, no route, reset, connection lost mid-session
    ├── SSHTimeout          transient   TCP connect, banner, key exchange, auth, command or
    │                                   transfer took longer than its bound
    ├── SSHHostKeyMismatch  permanent   the host key is not the pinned one: an attack or a wrong
    │                                   pin. Never retried silently, never accepted.
    ├── SSHAuthFailed       permanent   the server refused our key
    ├── SSHCommandFailed    permanent   the command ran and exited non-zero
    │                                   (.exit_status, .stderr_tail with key blocks removed)
    └── SSHTransferFailed   permanent   an upload or download was refused (.remote_path)
        └── SSHFileNotFound

A pin or client key that does not parse raises ``ValueError`` at construction. Never put
secrets in a command line (commands appear in logs and errors): send them with ``put()``, or
many files at once with ``put_many()`` (one command, the archive on its standard input).

paramiko's transport logs to ``provisioner.cloud.ssh.paramiko``, set to CRITICAL: below that
it is chatter, and every ERROR it logs (one record per traceback line, for each refused, reset
or silent handshake) reaches the caller as one of the errors above anyway.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import posixpath
import re
import selectors
import shlex
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paramiko

from provisioner.cloud.errors import ProviderError, TransientError

PARAMIKO_LOGGER = "provisioner.cloud.ssh.paramiko"
logging.getLogger(PARAMIKO_LOGGER).setLevel(logging.CRITICAL)
log = logging.getLogger(__name__)

_CHUNK = 65536
_TAIL_CHARS = 1000
_PEM_BLOCK = re.compile(r"-----BEGIN [^\n-]+-----.*?(?:-----END [^\n-]+-----|\Z)", re.DOTALL)
_WG_KEY = re.compile(r"\b((?:PrivateKey|PresharedKey)\s*=\s*)[A-Za-z0-9+/=]+", re.I)   # wg-quick files
_NetErrors = (paramiko.SSHException, OSError, EOFError)

# --- many files in one command ---------------------------------------------------------------------
#
# SFTP costs four or five round trips a file (open, chmod, write and close, rename; a stat for a
# new directory): ~40 for an install's files, seconds to a server across an ocean, and the
# most CPU of an install in a busy worker. put_many() sends one tar archive on the standard
# input of one POSIX sh command instead: umask 077 from the start, the archive unpacked into a
# fresh private directory beside the files, then each file moved over its old self (a rename
# in one file system: a reader sees the old file or the new one, never half of one), with the
# mode its archive entry gives it (root's tar keeps modes). The names are arguments, not part
# of the script; the temporary directory goes whatever happens. Ends by printing UPLOAD_OK.
UPLOAD_OK = "provisioner-upload: ok"
UPLOAD_TAG = "provisioner-upload"      # $0 of the script: what a process list shows
_UPLOAD_SCRIPT = (
    'set -eu; umask 077; d=$1; shift; mkdir -p -- "$d"; '
    't=$(mktemp -d "$d/.upload.XXXXXX"); trap \'rm -rf -- "$t"\' EXIT; '
    'tar -x -f - -C "$t" --no-same-owner; '
    'for f in "$@"; do mv -f -T -- "$t/$f" "$d/$f"; done; '
    f'echo "{UPLOAD_OK}"'
)
_UPLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def upload_command(directory: str, names: Iterable[str]) -> str:
    """The command that writes the archive's files ``names`` into ``directory``."""
    return shlex.join(["sh", "-c", _UPLOAD_SCRIPT, UPLOAD_TAG, directory, *names])


def upload_archive(files: Mapping[str, tuple[bytes, int]], mtime: float | None = None) -> bytes:
    """A tar archive of ``files`` (name -> (data, mode)), owned by root, in name order."""
    buffer = io.BytesIO()
    stamp = int(time.time() if mtime is None else mtime)  # tar warns about a time stamp of 0 or in the future
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in sorted(files):
            data, mode = files[name]
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode, entry.mtime = len(data), mode, stamp
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = "root"
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


class SSHError(ProviderError):
    provider = "ssh"


class SSHUnreachable(SSHError, TransientError):
    """The host did not answer or the connection dropped: it may still be booting."""


class SSHTimeout(SSHError, TransientError):
    """A command or transfer ran past its timeout (its outcome is unknown)."""


class SSHHostKeyMismatch(SSHError):
    pass


class SSHAuthFailed(SSHError):
    pass


class SSHCommandFailed(SSHError):
    def __init__(self, command: str, exit_status: int, stderr_tail: str) -> None:
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        super().__init__(f"{command!r} exited with status {exit_status}: {stderr_tail or '(no stderr)'}")


class SSHTransferFailed(SSHError):
    def __init__(self, remote_path: str, reason: str) -> None:
        self.remote_path = remote_path
        super().__init__(f"file transfer {remote_path}: {reason}")


class SSHFileNotFound(SSHTransferFailed):
    pass


def load_public_key(line: str) -> paramiko.PKey:
    """Parse one OpenSSH public key line (``ssh-ed25519 AAAA... [comment]``)."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("a public key line is '<type> <base64> [comment]'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except (binascii.Error, paramiko.UnknownKeyType, paramiko.SSHException, ValueError):
        raise ValueError(f"not a usable {parts[0]!r} public key") from None


def load_private_key(pem: str) -> paramiko.PKey:
    """Parse an unencrypted OpenSSH/PEM private key (ed25519, ECDSA or RSA)."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(pem))
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise ValueError("the client key is not an unencrypted OpenSSH or PEM private key")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without PEM/OpenSSH key blocks, WireGuard key lines' values or any of ``secrets``."""
    text = _WG_KEY.sub(r"\1[key removed]", _PEM_BLOCK.sub("[key block removed]", text))
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    pinned_host_key: str
    username: str = "root"

    def __post_init__(self) -> None:
        load_public_key(self.pinned_host_key)

    @property
    def known_hosts_name(self) -> str:
        """The name paramiko looks host keys up by."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.username}@{self.known_hosts_name}"


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:  # output may hold secrets (`cat server.key`): sizes only
        sizes = f"stdout={len(self.stdout)} chars, stderr={len(self.stderr)} chars"
        return f"CommandResult(exit_status={self.exit_status}, {sizes})"


class SSHSession:
    """One pinned SSH connection; use as a context manager. Not shared between threads."""

    def __init__(
        self,
        target: SSHTarget,
        client_key_pem: str,
        *,
        connect_timeout: float = 15.0,
        banner_timeout: float | None = None,
        auth_timeout: float = 15.0,
        transfer_timeout: float = 60.0,
        redact: Iterable[str] = (),
    ) -> None:
        self.target = target
        self._pin = load_public_key(target.pinned_host_key)
        self._pkey = load_private_key(client_key_pem)
        self._connect_timeout = connect_timeout
        self._banner_timeout = banner_timeout if banner_timeout is not None else connect_timeout
        self._auth_timeout = auth_timeout
        self._transfer_timeout = transfer_timeout
        self._redact = tuple(s for s in redact if s)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        # Directories this session saw or made since its last command: each upload into one of
        # them skips the stat round trip (a command may remove a directory, so a command forgets).
        self._dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"SSHSession({self.target}, pinned {self._pin.fingerprint})"

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        if self._client is not None:
            return
        client = paramiko.SSHClient()
        client.set_log_channel(PARAMIKO_LOGGER)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(self.target.known_hosts_name, self._pin.get_name(), self._pin)
        started = time.monotonic()
        try:
            client.connect(
                hostname=self.target.host,
                port=self.target.port,
                username=self.target.username,
                pkey=self._pkey,
                timeout=self._connect_timeout,
                banner_timeout=self._banner_timeout,
                auth_timeout=self._auth_timeout,
                channel_timeout=self._connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except _NetErrors as exc:
            error = self._classify_connect_error(exc, client, time.monotonic() - started)
            client.close()
            log.debug("ssh %s: connect failed: %s", self.target, error)
            raise error from exc
        self._client = client
        log.debug("ssh %s: connected, host key %s matches the pin", self.target, self._pin.fingerprint)

    def _classify_connect_error(self, exc: BaseException, client: paramiko.SSHClient, elapsed: float) -> SSHError:
        where = str(self.target)
        if isinstance(exc, paramiko.BadHostKeyException):
            return SSHHostKeyMismatch(
                f"{where} presented host key {exc.key.fingerprint}, but {self._pin.fingerprint} is pinned; "
                "refusing to connect (a wrong pin, a rebuilt server or an attack)"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            transport = client.get_transport()
            if "timeout" in str(exc).lower():
                return SSHTimeout(f"{where}: no answer to authentication within {self._auth_timeout:g}s")
            if transport is None or not transport.is_active():
                return SSHUnreachable(f"{where}: connection lost during authentication")
            return SSHAuthFailed(f"{where} refused our key ({self._pkey.fingerprint})")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return SSHUnreachable(f"{where}: connection refused or no route to host")
        if isinstance(exc, TimeoutError):
            return SSHTimeout(f"{where}: TCP connect timed out after {self._connect_timeout:g}s")
        if isinstance(exc, OSError):
            return SSHUnreachable(f"{where}: {exc.strerror or type(exc).__name__}")
        if isinstance(exc.__context__, TimeoutError) or elapsed >= self._connect_timeout:
            return SSHTimeout(f"{where}: no SSH banner or key exchange within {self._banner_timeout:g}s")
        if isinstance(exc, EOFError) or isinstance(exc.__context__, EOFError | OSError):
            return SSHUnreachable(f"{where}: connection closed during the SSH handshake")
        return SSHUnreachable(f"{where}: SSH handshake failed: {exc}")

    def close(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        if sftp is not None:
            sftp.close()
        if client is not None:
            client.close()

    def _transport(self) -> paramiko.Transport:
        if self._client is None:
            raise RuntimeError("SSHSession is not connected; use it as a context manager")
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHUnreachable(f"{self.target}: connection lost")
        return transport

    def run(self, command: str, timeout: float, *, check: bool = True, stdin: bytes = b"") -> CommandResult:
        """Run ``command`` with ``stdin`` on its standard input; raise SSHTimeout if it has not
        finished after ``timeout`` seconds.

        With ``check`` (the default) a non-zero exit raises SSHCommandFailed; without it the
        caller reads ``exit_status`` (e.g. ``systemctl is-active`` answers with 3).
        """
        transport = self._transport()
        self._dirs.clear()
        deadline = time.monotonic() + timeout
        log.debug("ssh %s: running %r (timeout %gs)", self.target, command, timeout)
        try:
            chan = transport.open_session(timeout=min(timeout, self._connect_timeout))
        except _NetErrors as exc:
            raise self._lost(exc, "opening a session") from exc
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            chan.close()

        # exec_command waits for its reply with no timeout: closing the channel wakes it up
        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                chan.exec_command(command)
            finally:
                watchdog.cancel()
            if stdin:
                chan.settimeout(max(0.001, deadline - time.monotonic()))   # a host that never reads
                chan.sendall(stdin)
                chan.settimeout(None)
            chan.shutdown_write()
            out, err = self._drain(chan, deadline, expired)
            status = chan.exit_status
        except _NetErrors as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                log.debug("ssh %s: %r timed out", self.target, command)
                raise SSHTimeout(
                    f"{self.target}: {scrub(command, self._redact)!r} did not finish within {timeout:g}s"
                ) from exc
            raise self._lost(exc, f"running {command!r}") from exc
        finally:
            chan.close()
        # paramiko closes the channels of a dead transport before it marks itself inactive
        if status == -1 and (not transport.is_active() or transport.get_exception() is not None):
            raise SSHUnreachable(f"{self.target}: connection lost while running {command!r}")
        result = CommandResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        log.debug("ssh %s: %r exited %d", self.target, command, status)
        if check and status != 0:
            tail = scrub(result.stderr, self._redact).strip()[-_TAIL_CHARS:]
            raise SSHCommandFailed(scrub(command, self._redact), status, tail)
        return result

    def _drain(self, chan: paramiko.Channel, deadline: float, expired: threading.Event) -> tuple[bytes, bytes]:
        # Both streams are read to EOF *before* waiting for the exit status: a full window blocks the server.
        # A selector (epoll), not select.select(): select() cannot take a descriptor >= 1024, and a busy
        # worker's channel pipes get there ("ValueError: filedescriptor out of range in select()").
        out, err = bytearray(), bytearray()
        with selectors.DefaultSelector() as waiter:
            waiter.register(chan, selectors.EVENT_READ)
            while True:
                finished = chan.eof_received or chan.closed  # looked at first: data precedes EOF
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                if finished:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or expired.is_set():
                    raise TimeoutError
                waiter.select(remaining)
        if expired.is_set() or not chan.status_event.wait(max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError
        return bytes(out), bytes(err)

    def _lost(self, exc: BaseException, doing: str) -> SSHError:
        if isinstance(exc, TimeoutError) or "timeout" in str(exc).lower():  # "Timeout opening channel."
            return SSHTimeout(f"{self.target}: timed out {doing}")
        return SSHUnreachable(f"{self.target}: connection lost {doing}: {type(exc).__name__}")

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            assert self._client is not None
            self._sftp = self._client.open_sftp()
            self._sftp.get_channel().settimeout(self._transfer_timeout)
        return self._sftp

    @contextmanager
    def _sftp_errors(self, remote_path: str, doing: str) -> Iterator[None]:
        self._transport()
        try:
            yield
        except FileNotFoundError as exc:
            raise SSHFileNotFound(remote_path, "no such file or directory") from exc
        except TimeoutError as exc:
            raise SSHTimeout(f"{self.target}: {doing} {remote_path} took over {self._transfer_timeout:g}s") from exc
        except _NetErrors as exc:
            transport = self._client.get_transport() if self._client else None
            lost = transport is None or not transport.is_active() or transport.get_exception() is not None
            if lost or isinstance(exc, EOFError | paramiko.SSHException):
                raise SSHUnreachable(f"{self.target}: connection lost during {doing} {remote_path}") from exc
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise SSHTransferFailed(remote_path, f"{doing} failed: {reason}") from exc

    def put(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        """Write ``data`` to ``remote_path`` atomically, creating missing parent directories (0700).

        The temporary file gets ``mode`` before any byte is written, so a key is never readable
        by others, even for a moment.
        """
        if not remote_path.startswith("/"):
            raise ValueError("remote_path must be absolute")
        temporary = f"{remote_path}.provisioner-tmp"
        with self._sftp_errors(remote_path, "upload"):
            sftp = self._sftp_client()
            self._makedirs(sftp, posixpath.dirname(remote_path))
            with sftp.open(temporary, "wb") as handle:
                handle.chmod(mode)
                handle.set_pipelined(True)
                handle.write(data)
            sftp.posix_rename(temporary, remote_path)
        log.debug("ssh %s: uploaded %d bytes to %s (mode %o)", self.target, len(data), remote_path, mode)

    def put_many(self, directory: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        """Write each of ``files`` (name -> (data, mode)) into ``directory`` with one command
        (see :data:`UPLOAD_OK`): each file replaced atomically, never readable by others on
        the way. Names are plain file names. Raises SSHTransferFailed when the host refused."""
        if not directory.startswith("/"):
            raise ValueError("directory must be absolute")
        bad = [name for name in files if not _UPLOAD_NAME.fullmatch(name)]
        if not files or bad:
            raise ValueError(f"plain file names expected, got {bad or 'none'}")
        command = upload_command(directory, sorted(files))
        result = self.run(command, timeout=self._transfer_timeout, check=False, stdin=upload_archive(files))
        lines = result.stdout.strip().splitlines()
        if result.exit_status != 0 or not lines or lines[-1].strip() != UPLOAD_OK:
            tail = scrub(result.stderr, self._redact).strip()[-_TAIL_CHARS:]
            raise SSHTransferFailed(directory, f"upload of {len(files)} files failed (exit {result.exit_status}): "
                                               f"{tail or 'no message'}")
        log.debug("ssh %s: uploaded %d files (%d bytes) to %s", self.target, len(files),
                  sum(len(data) for data, _ in files.values()), directory)

    def get(self, remote_path: str) -> bytes:
        buffer = io.BytesIO()
        with self._sftp_errors(remote_path, "download"):
            self._sftp_client().getfo(remote_path, buffer)
        log.debug("ssh %s: downloaded %d bytes from %s", self.target, buffer.tell(), remote_path)
        return buffer.getvalue()

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if directory in self._dirs:
            return
        wanted, missing = directory, []
        while directory not in ("", "/"):
            try:
                sftp.stat(directory)
                break
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for path in reversed(missing):
            sftp.mkdir(path, 0o700)
        self._dirs.add(wanted)
