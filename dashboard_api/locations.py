"""Vultr region ids and the city each one is in (what the dashboard shows).

The page translates city names through its i18n files (``city.<id>``); these English names
are the fallback and what API clients get.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    id: str
    city: str
    country: str  # ISO 3166-1 alpha-2


_TABLE = (
    ("ewr", "New Jersey", "US"), ("ord", "Chicago", "US"), ("dfw", "Dallas", "US"),
    ("sea", "Seattle", "US"), ("lax", "Los Angeles", "US"), ("atl", "Atlanta", "US"),
    ("mia", "Miami", "US"), ("sjc", "Silicon Valley", "US"), ("hnl", "Honolulu", "US"),
    ("yto", "Toronto", "CA"), ("mex", "Mexico City", "MX"), ("sao", "São Paulo", "BR"),
    ("scl", "Santiago", "CL"), ("ams", "Amsterdam", "NL"), ("lhr", "London", "GB"),
    ("man", "Manchester", "GB"), ("fra", "Frankfurt", "DE"), ("cdg", "Paris", "FR"),
    ("waw", "Warsaw", "PL"), ("mad", "Madrid", "ES"), ("sto", "Stockholm", "SE"),
    ("tlv", "Tel Aviv", "IL"), ("nrt", "Tokyo", "JP"), ("itm", "Osaka", "JP"),
    ("icn", "Seoul", "KR"), ("sgp", "Singapore", "SG"), ("bom", "Mumbai", "IN"),
    ("del", "Delhi NCR", "IN"), ("blr", "Bangalore", "IN"), ("syd", "Sydney", "AU"),
    ("mel", "Melbourne", "AU"), ("jnb", "Johannesburg", "ZA"),
)

REGIONS: dict[str, Region] = {rid: Region(rid, city, country) for rid, city, country in _TABLE}


def region(region_id: str | None) -> Region | None:
    """The region for an id; an id we do not know still gets a row (its id as the city)."""
    if not region_id:
        return None
    return REGIONS.get(region_id) or Region(region_id, region_id.upper(), "")
