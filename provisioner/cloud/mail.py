"""Outgoing email over SMTP (``smtplib``), behind one thin seam.

Errors (nothing from ``smtplib``, ``ssl`` or ``socket`` escapes this module)::

    MailError                      every message carries host:port and the SMTP code, never the password
    ├── MailTransient              retry later: connection refused/reset, timeouts, TLS handshake
    │   │                          failures, a server that hangs up, any 4xx reply
    │   └── MailConfigError        retry later, but a human must fix the settings: authentication
    │                              rejected (535 …), STARTTLS required but not offered, sender
    │                              (from_address) refused with 5xx
    └── MailPermanent              never retried: 5xx for the recipient (RCPT TO) or for the
                                   message itself (DATA), e.g. 550 "no such user", 554 "rejected"

Security (``notify.smtp_security``): ``starttls`` (plain connect, then STARTTLS, which must be
offered), ``ssl`` (implicit TLS from the first byte, usually port 465) or ``none`` (plain;
only for a relay on localhost). The TLS context verifies the server certificate and host
name (``ssl.create_default_context()``) unless one is passed in. LOGIN happens only when a
username is set, and only after TLS unless security is ``none``.

One connection per message: a handful of messages a minute does not need pooling, and a
fresh connection means a dropped one never eats the next message. Once the server has
accepted DATA the message counts as sent, even if QUIT then fails.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage

from provisioner.cloud.errors import PermanentError, ProviderError, TransientError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


class MailError(ProviderError):
    provider = "smtp"

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class MailTransient(MailError, TransientError):
    """Deferred, unreachable, or refused for now: sent again later."""


class MailConfigError(MailTransient):
    """Our SMTP settings are wrong (login refused, no STARTTLS): sent again once fixed."""


class MailPermanent(MailError, PermanentError):
    """The server refused this recipient or message for good (5xx)."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str = "starttls"             # starttls | ssl | none
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT


class SmtpMailer:
    def __init__(self, config: SmtpConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        if config.security not in ("starttls", "ssl", "none"):
            raise ValueError(f"smtp security must be starttls, ssl or none, not {config.security!r}")
        self.config = config
        self._ssl_context = ssl_context

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        """Deliver one message to the server, or raise a :class:`MailError`."""
        cfg = self.config
        smtp: smtplib.SMTP | None = None
        try:
            if cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            smtp.ehlo()
            if cfg.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise MailConfigError(f"SMTP {self.where} does not offer STARTTLS "
                                          "(set notify.smtp_security to \"ssl\" or fix the server)")
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(message)
        except MailError:
            self._close(smtp)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            self._close(smtp)
            raise MailConfigError(f"SMTP {self.where} rejected the login for notify.smtp_username "
                                  f"({exc.smtp_code})", code=exc.smtp_code) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            self._close(smtp)
            codes = [code for code, _ in exc.recipients.values()]
            shown = ", ".join(str(c) for c in codes)
            if codes and all(c >= 500 for c in codes):
                raise MailPermanent(f"SMTP {self.where} refused the recipient ({shown})", code=codes[0]) from exc
            raise MailTransient(f"SMTP {self.where} deferred the recipient ({shown})",
                                code=codes[0] if codes else None) from exc
        except smtplib.SMTPSenderRefused as exc:
            self._close(smtp)
            cls: type[MailError] = MailConfigError if exc.smtp_code >= 500 else MailTransient
            raise cls(f"SMTP {self.where} refused the sender notify.from_address ({exc.smtp_code})",
                      code=exc.smtp_code) from exc
        except smtplib.SMTPDataError as exc:
            self._close(smtp)
            cls = MailPermanent if exc.smtp_code >= 500 else MailTransient
            raise cls(f"SMTP {self.where} refused the message ({exc.smtp_code})", code=exc.smtp_code) from exc
        except smtplib.SMTPResponseException as exc:
            self._close(smtp)
            raise MailTransient(f"SMTP {self.where} answered {exc.smtp_code}", code=exc.smtp_code) from exc
        except smtplib.SMTPNotSupportedError as exc:
            self._close(smtp)
            raise MailConfigError(f"SMTP {self.where} does not support what the settings ask for "
                                  "(AUTH without TLS?)") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._close(smtp)
            raise MailTransient(f"SMTP {self.where}: TLS failed ({_brief(exc)})") from exc
        except (smtplib.SMTPException, OSError) as exc:  # OSError covers refused, reset, timeouts
            self._close(smtp)
            raise MailTransient(f"SMTP {self.where}: {_brief(exc)}") from exc
        # accepted: from here on a failure must not make us send it again
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            self._close(smtp)

    @staticmethod
    def _close(smtp: smtplib.SMTP | None) -> None:
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                log.debug("closing an SMTP connection failed", exc_info=True)


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
