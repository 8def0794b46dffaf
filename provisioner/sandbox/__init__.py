"""SIMULATOR ONLY: the sandbox -- local simulators of Vultr v2, Cloudflare v4 and SSH hosts
for tests and demos.  Production code never imports this package."""
