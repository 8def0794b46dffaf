"""The SMTP adapter against a real local server: STARTTLS, implicit TLS, login, error classes."""

from __future__ import annotations

import logging
from email.message import EmailMessage

import pytest

from provisioner.cloud.mail import MailConfigError, MailPermanent, MailTransient, SmtpConfig, SmtpMailer
from tests.fixtures.net import free_port
from tests.fixtures.smtp import Cert, self_signed_cert, smtp_server

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return self_signed_cert(tmp_path_factory.mktemp("smtp-tls"))


def message(to: str = "customer@shop.test") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "noreply@vpn.example.com"
    m["To"] = to
    m["Subject"] = "Ihr VPN-Server ist bereit"
    m.set_content("Grüße aus dem Test\n")
    return m


def test_it_sends_over_starttls_and_logs_in(cert: Cert) -> None:
    with smtp_server(starttls=cert, users={"mailer": PASSWORD}) as (inbox, port):
        cfg = SmtpConfig("127.0.0.1", port, "starttls", "mailer", PASSWORD, timeout=10)
        SmtpMailer(cfg, ssl_context=cert.client_context()).send(message())
        [got] = inbox.snapshot()
    assert got.tls and got.authenticated
    assert got.subject == "Ihr VPN-Server ist bereit" and "Grüße" in got.body


def test_it_refuses_a_certificate_it_cannot_verify(cert: Cert) -> None:
    with smtp_server(starttls=cert) as (inbox, port):
        cfg = SmtpConfig("127.0.0.1", port, "starttls", timeout=10)
        with pytest.raises(MailTransient, match="TLS"):
            SmtpMailer(cfg).send(message())      # the system trust store does not know our test CA
        assert inbox.snapshot() == []


def test_it_reports_a_wrong_password_as_a_config_error_without_the_password(
        cert: Cert, caplog: pytest.LogCaptureFixture) -> None:
    with smtp_server(starttls=cert, users={"mailer": PASSWORD}) as (inbox, port):
        cfg = SmtpConfig("127.0.0.1", port, "starttls", "mailer", "wrong-password-value", timeout=10)
        with caplog.at_level(logging.DEBUG), pytest.raises(MailConfigError) as err:
            SmtpMailer(cfg, ssl_context=cert.client_context()).send(message())
        assert inbox.snapshot() == []
    assert err.value.code == 535
    assert "wrong-password-value" not in str(err.value) and "wrong-password-value" not in caplog.text
    assert "wrong-password-value" not in repr(cfg)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")   # aiosmtpd: implicit TLS is TLS
def test_it_sends_over_implicit_tls(cert: Cert) -> None:
    with smtp_server(implicit_tls=cert, users={"mailer": PASSWORD}) as (inbox, port):
        cfg = SmtpConfig("127.0.0.1", port, "ssl", "mailer", PASSWORD, timeout=10)
        SmtpMailer(cfg, ssl_context=cert.client_context()).send(message())
        [got] = inbox.snapshot()
    assert got.tls and got.authenticated


def test_it_will_not_send_in_clear_when_starttls_is_missing() -> None:
    with smtp_server() as (inbox, port):               # a server that offers no STARTTLS
        with pytest.raises(MailConfigError, match="STARTTLS"):
            SmtpMailer(SmtpConfig("127.0.0.1", port, "starttls", timeout=10)).send(message())
        assert inbox.snapshot() == []


def test_it_classifies_refusals_and_outages() -> None:
    with smtp_server() as (inbox, port):
        mailer = SmtpMailer(SmtpConfig("127.0.0.1", port, "none", timeout=10))
        inbox.rcpt_reply = "550 5.1.1 no such user"
        with pytest.raises(MailPermanent) as permanent:
            mailer.send(message())
        assert permanent.value.code == 550
        inbox.rcpt_reply = "452 4.2.2 mailbox full"
        with pytest.raises(MailTransient) as transient:
            mailer.send(message())
        assert not isinstance(transient.value, MailPermanent) and transient.value.code == 452
    with pytest.raises(MailTransient, match="127.0.0.1"):
        SmtpMailer(SmtpConfig("127.0.0.1", free_port(), "none", timeout=5)).send(message())


def test_it_refuses_an_unknown_security_mode() -> None:
    with pytest.raises(ValueError):
        SmtpMailer(SmtpConfig("127.0.0.1", 25, "tls"))
