"""SIMULATOR ONLY: a small, realistic Vultr catalogue (regions, plans, operating systems)
for the sandbox's simulated Vultr API.  Shapes follow REFERENCE §1.7."""

from __future__ import annotations

from typing import Any

_REGIONS = [
    ("ewr", "New Jersey", "US", "North America"),
    ("ord", "Chicago", "US", "North America"),
    ("lax", "Los Angeles", "US", "North America"),
    ("ams", "Amsterdam", "NL", "Europe"),
    ("fra", "Frankfurt", "DE", "Europe"),
    ("lhr", "London", "GB", "Europe"),
    ("cdg", "Paris", "FR", "Europe"),
    ("nrt", "Tokyo", "JP", "Asia"),
    ("sgp", "Singapore", "SG", "Asia"),
    ("syd", "Sydney", "AU", "Australia"),
]

REGIONS: list[dict[str, Any]] = [
    {"id": rid, "city": city, "country": country, "continent": continent,
     "options": ["ddos_protection"]}
    for rid, city, country, continent in _REGIONS
]

_ALL = [r["id"] for r in REGIONS]

PLANS: list[dict[str, Any]] = [
    {"id": pid, "vcpu_count": cpu, "ram": ram, "disk": disk, "disk_count": 1, "bandwidth": bw,
     "monthly_cost": cost, "type": "vc2", "locations": locs}
    for pid, cpu, ram, disk, bw, cost, locs in [
        ("vc2-1c-0.5gb", 1, 512, 10, 512, 2.5, ["ewr", "ams", "sgp"]),
        ("vc2-1c-1gb", 1, 1024, 25, 1024, 5, _ALL),
        ("vc2-1c-2gb", 1, 2048, 55, 2048, 10, _ALL),
        ("vc2-2c-4gb", 2, 4096, 80, 3072, 20, _ALL),
        ("vc2-4c-8gb", 4, 8192, 160, 4096, 40, _ALL),
    ]
]

OS_LIST: list[dict[str, Any]] = [
    {"id": 2136, "name": "Debian 12 x64 (bookworm)", "arch": "x64", "family": "debian"},
    {"id": 2284, "name": "Ubuntu 24.04 LTS x64", "arch": "x64", "family": "ubuntu"},
    {"id": 1743, "name": "Ubuntu 22.04 LTS x64", "arch": "x64", "family": "ubuntu"},
    {"id": 477, "name": "Debian 11 x64 (bullseye)", "arch": "x64", "family": "debian"},
    {"id": 164, "name": "Snapshot", "arch": "x64", "family": "snapshot"},
]

REGION_IDS = frozenset(_ALL)
PLAN_BY_ID = {p["id"]: p for p in PLANS}
OS_BY_ID = {o["id"]: o for o in OS_LIST}
SNAPSHOT_OS_ID = 164
