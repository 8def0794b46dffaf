"""Provisioner: storefront subscriptions in, OpenVPN servers on Vultr with Cloudflare DNS out."""

__version__ = "0.1.0"
