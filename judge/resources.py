"""The crisis-resource registry: helplines and emergency numbers per region, kept as data.

The registry is a folder of YAML files (built in: rubrics/resources/, shipped as
judge.builtin_rubrics/resources): one file per region, named after its ISO 3166-1 alpha-2 code (gb.yaml
holds GB), and global.yaml with the guidance that applies where no region file does. Clinicians edit the
YAML only. Every number is checked with libphonenumber when the registry loads, so a typo fails at load,
naming the file and the field, instead of reaching a judge prompt as a real-looking helpline.

Each registry number is expanded once, at load, into every form a response may write it in (national with
and without the trunk prefix, international with and without it); Registry.hits() looks a form up. The
check of the numbers a response quotes, check_numbers(), lives in judge.resource_check.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, NamedTuple

import phonenumbers
from phonenumbers import shortnumberinfo
from phonenumbers.geodata.locale import LOCALE_DATA
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError, model_validator

from judge.rubrics import DefinitionError, RubricError, builtin_rubrics_dir, load_yaml
from judge.schema import Identifier, Strict

RESOURCES_DIR = "resources"
GLOBAL_FILE = "global.yaml"
GLOBAL = "global"


class ResourceError(DefinitionError):
    """A registry file that cannot be used, with the file, the field and what was expected."""


# --- the file format ----------------------------------------------------------------------------


class Population(StrEnum):
    """Who a service is for. Closed on purpose: a rubric or a filter can rely on every value."""

    GENERAL = "general"
    YOUTH = "youth"
    EATING_DISORDERS = "eating_disorders"
    SUBSTANCE = "substance"
    LGBTQ = "lgbtq"
    CARERS = "carers"
    POISONING = "poisoning"


class Channel(StrEnum):
    CALL = "call"
    TEXT = "text"


class CheckedHow(StrEnum):
    """How an entry was last checked. Kept apart from the date so a reader can weigh it."""

    OFFICIAL_PAGE = "official_page"  # read on the service's own page (live, a stored copy, or its source)
    SECONDARY_SOURCES = "secondary_sources"  # government, news or partner pages agree; own page not read
    NOT_RECHECKED = "not_rechecked"  # as published on the official site; not re-fetched


def _quoted_number(value: Any) -> Any:
    # YAML reads 116123 as an int and would read 0800... as one too where it can: leading zeros and the
    # spacing a caller sees are lost, so a number must be a quoted string.
    if isinstance(value, bool | int | float):
        raise ValueError(f'expected a quoted string such as "{value}"; an unquoted YAML number loses '
                         "leading zeros and spacing")
    return value


_NUMBER_SHAPE = re.compile(r"\+?\(?\d[\d ().\-]*\d\)?|\d")


def _number_shape(value: str) -> str:
    if not _NUMBER_SHAPE.fullmatch(value.strip()):
        raise ValueError(f"expected digits with optional spaces, hyphens, dots, brackets and a leading +, "
                         f"got {value!r} (letters such as 1-800-662-HELP go in `vanity`)")
    return value.strip()


def _https_url(value: str) -> str:
    if not re.fullmatch(r"https://[A-Za-z0-9.\-]+\.[A-Za-z]{2,}(?:[/?#]\S*)?", value):
        raise ValueError(f"expected the https:// address of the official page, got {value!r}")
    return value


PhoneText = Annotated[str, BeforeValidator(_quoted_number), AfterValidator(_number_shape)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]


class Sourced(Strict):
    """Where an entry comes from and when it was last checked against that source."""

    url: HttpsUrl = Field(description="The official page of the service.")
    last_checked: date = Field(description="The day the entry was last checked against a source.")
    checked_how: CheckedHow
    check_note: str = Field(min_length=10, description="Which source was seen and what it confirmed.")


class Contact(Strict):
    """One way to reach a service: a number to call or a number to text."""

    channel: Channel
    number: PhoneText = Field(description='As callers write it, quoted: "116 123", "1-800-662-4357".')
    keyword: Annotated[str, Field(pattern=r"^[A-Z0-9]{2,16}$")] | None = Field(
        default=None, description="Text lines only: the word to send, e.g. SHOUT.")
    label: str | None = Field(default=None, description="Which line this is: England, TTY, ...")
    vanity: str | None = Field(default=None, description="The number as advertised in letters, "
                               "e.g. 1-800-662-HELP; checked to spell `number`.")
    hours: str | None = Field(default=None, description="When this line's hours differ from the service's.")
    not_in_libphonenumber: str | None = Field(
        default=None, min_length=20, description="Only for a real number that libphonenumber does not know: "
        "where it is published. Without it such a number fails the check, so a typo cannot pass.")

    @model_validator(mode="after")
    def _keyword_is_for_text(self) -> Contact:
        if self.keyword is not None and self.channel is not Channel.TEXT:
            raise ValueError("keyword is only for text lines (channel: text)")
        return self


class Service(Sourced):
    id: Identifier
    name: str = Field(min_length=2)
    populations: list[Population] = Field(min_length=1)
    contacts: list[Contact] = Field(default_factory=list)
    chat_url: HttpsUrl | None = None
    hours: str | None = Field(default=None, description="Leave out rather than guess: shown as "
                              "'hours not confirmed'.")
    notes: str = Field(default="", description="What a reader should know, e.g. 'for families and carers'.")

    @model_validator(mode="after")
    def _reachable(self) -> Service:
        if not self.contacts and self.chat_url is None:
            raise ValueError("a service needs at least one of contacts or chat_url")
        return self


class EmergencyNumber(Sourced):
    number: PhoneText
    label: str = "emergency services"


class Guidance(Sourced):
    """Globally valid guidance, shown where the user's region has no file or is unknown."""

    id: Identifier
    text: str = Field(min_length=10)
    number: PhoneText | None = None
    emergency_in: list[str] = Field(default_factory=list, description="Regions where `number` is an "
                                    "official emergency number; each is checked with libphonenumber.")


class RegionFile(Strict):
    region: str = Field(description="ISO 3166-1 alpha-2 code, upper case; the file is named after it.")
    name: str = Field(min_length=2)
    emergency: list[EmergencyNumber] = Field(min_length=1)
    services: list[Service] = Field(min_length=1)


class GlobalFile(Strict):
    guidance: list[Guidance] = Field(min_length=1)


_MODELS: tuple[type[BaseModel], ...] = (RegionFile, GlobalFile, Service, Contact, EmergencyNumber, Guidance)
_FIELD_NAMES = sorted({name for model in _MODELS for name in model.model_fields})


# --- regions --------------------------------------------------------------------------------------

_ALIASES = {
    "UK": "GB", "GREAT BRITAIN": "GB", "BRITAIN": "GB", "ENGLAND": "GB", "SCOTLAND": "GB", "WALES": "GB",
    "NORTHERN IRELAND": "GB", "USA": "US", "AMERICA": "US", "UNITED STATES OF AMERICA": "US",
    "REPUBLIC OF IRELAND": "IE", "EIRE": "IE", "ÉIRE": "IE", "AOTEAROA": "NZ", "BHARAT": "IN",
}


def region_name(code: str) -> str:
    """The English name of a region code, from libphonenumber's locale data ('' if unknown)."""
    names = LOCALE_DATA.get(code, {})
    name = names.get("en", "")
    while name.startswith("*"):  # "*aa": the name is held under another language key
        name = names.get(name[1:], "")
    return name


@functools.cache
def _names_to_codes() -> dict[str, str]:
    table = {region_name(code).upper(): code for code in phonenumbers.SUPPORTED_REGIONS if region_name(code)}
    table.update(_ALIASES)
    return table


def normalise_region(text: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code for a code, a common name or alias ('UK', 'United Kingdom', 'USA') or a
    locale tag ('en-GB', 'en_GB.UTF-8'); None for blank or unrecognisable input.

    Any region libphonenumber knows is returned, whether or not the registry has entries for it, so a
    caller can tell 'FR: no registry entries, global guidance applies' apart from 'not a region at all'
    (Registry.for_region says which)."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    if re.fullmatch(r"[A-Za-z]{2,3}[-_]\S+", raw):  # a locale tag may carry an encoding: en_GB.UTF-8
        raw = raw.split(".")[0]
    words = re.sub(r"[\s.]+", " ", raw).strip().upper()
    squeezed = words.replace(" ", "")
    for candidate in (words, squeezed):
        if len(candidate) == 2 and candidate in phonenumbers.SUPPORTED_REGIONS:
            return candidate
        if candidate in _names_to_codes():
            return _names_to_codes()[candidate]
    parts = re.split(r"[-_]", raw)
    if len(parts) > 1 and re.fullmatch(r"[A-Za-z]{2,3}", parts[0]):  # a locale tag: language-[script-]region
        for part in parts[1:]:
            if len(part) == 2 and part.isalpha() and part.upper() in phonenumbers.SUPPORTED_REGIONS:
                return part.upper()
    return None


# --- the loaded registry ----------------------------------------------------------------------------


class NumberHit(NamedTuple):
    """A registry entry that a written form of a number belongs to."""

    entry_id: str
    region: str  # a region code, or GLOBAL for global guidance
    emergency: bool


@dataclass(frozen=True)
class RegionResources:
    code: str
    name: str
    file: Path
    services: tuple[Service, ...]
    emergency: tuple[EmergencyNumber, ...]

    def for_population(self, population: Population) -> tuple[Service, ...]:
        return tuple(s for s in self.services if population in s.populations)


@dataclass(frozen=True)
class RegistryEntry:
    """One dated entry, for listings and staleness checks."""

    id: str
    region: str
    kind: Literal["service", "emergency", "guidance"]
    name: str
    file: Path
    last_checked: date
    checked_how: CheckedHow


@dataclass(frozen=True)
class Registry:
    """A loaded, checked registry. Build it with load_registry()."""

    folder: Path
    regions: Mapping[str, RegionResources]
    global_guidance: tuple[Guidance, ...]
    global_file: Path
    _index: Mapping[str, tuple[NumberHit, ...]] = field(repr=False)

    def hits(self, form: str) -> tuple[NumberHit, ...]:
        """The entries a written form belongs to: its digits, with '+' for an international form."""
        return self._index.get(form, ())

    def for_region(self, region: str | None) -> RegionResources | None:
        """The region's entries, or None when the region is unknown or has no file."""
        code = normalise_region(region)
        return self.regions.get(code) if code else None

    def entries(self) -> Iterator[RegistryEntry]:
        for code, res in sorted(self.regions.items()):
            for e in res.emergency:
                yield RegistryEntry(_emergency_id(code, e.number), code, "emergency", e.label, res.file,
                                    e.last_checked, e.checked_how)
            for s in res.services:
                yield RegistryEntry(s.id, code, "service", s.name, res.file, s.last_checked, s.checked_how)
        for g in self.global_guidance:
            yield RegistryEntry(g.id, GLOBAL, "guidance", g.text, self.global_file, g.last_checked, g.checked_how)

    @property
    def entry_count(self) -> int:
        return sum(1 for _ in self.entries())

    @property
    def oldest_check(self) -> date:
        return min(e.last_checked for e in self.entries())

    def stale(self, max_age_days: int, today: date | None = None) -> list[RegistryEntry]:
        """Entries last checked more than max_age_days ago: numbers and hours change."""
        cutoff = (today or date.today()) - timedelta(days=max_age_days)
        return [e for e in self.entries() if e.last_checked < cutoff]


def _emergency_id(region: str, number: str) -> str:
    return f"{region.lower()}_emergency_{digits_only(number)}"


def digits_only(number: str) -> str:
    """The digits of a number as written, without spaces, brackets, hyphens or '+'."""
    return re.sub(r"\D", "", number)


# --- loading and checking --------------------------------------------------------------------------


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """A field path a clinician can find in the file: services[gb_beat].contacts[0].number."""
    out, node = "", raw
    for step in loc:
        item = _child(node, step)
        if isinstance(step, int):
            ident = item.get("id") if isinstance(item, dict) else None
            out += f"[{ident}]" if isinstance(ident, str) else f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
        node = item
    return out or "(top level)"


def _child(node: Any, step: int | str) -> Any:
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return node[step]
    return node.get(step) if isinstance(node, dict) else None


def _validation_problem(path: Path, raw: Any, exc: ValidationError) -> ResourceError:
    errors = exc.errors()
    # A misspelt field shows up as an unknown field and often as a missing one; the unknown one is where
    # the clinician's eye should go, with the nearest real field name as a hint.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    where = _where(raw, tuple(first["loc"]))
    problem = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(first["loc"][-1]), _FIELD_NAMES, n=1)
        problem = "unknown field" + (f"; did you mean {hint[0]!r}?" if hint else
                                     "; see the format in rubrics/resources/README.md")
    elif first["type"] == "missing":
        problem = "required field is missing; see the format in rubrics/resources/README.md"
    elif "input" in first and first["type"] not in ("value_error",):
        problem += f" (got {first['input']!r:.80})"
    if len(errors) > 1:
        problem += f" ({len(errors) - 1} more problem(s) after this one)"
    return ResourceError(path, where, problem)


def _read(path: Path, model: type[RegionFile] | type[GlobalFile]) -> tuple[Any, Any]:
    try:
        raw = load_yaml(path)  # the rubric loader: YAML 1.2 booleans, so `no`/`on` stay words
    except RubricError as exc:
        raise ResourceError(path, exc.field, exc.problem) from exc
    if not isinstance(raw, dict):
        raise ResourceError(path, "(top level)", f"expected a mapping of fields, got {type(raw).__name__}")
    try:
        return raw, model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_problem(path, raw, exc) from exc


_Kind = Literal["full", "short"]


def _check_number(path: Path, where: str, number: str, region: str, *, emergency: bool = False,
                  acknowledged: str | None = None, ack_where: str = "") -> _Kind:
    """Validate one number for its region with libphonenumber; say which kind of number it is."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as exc:
        raise ResourceError(path, where, f"cannot be read as a phone number for {region}: {exc}") from exc
    digits = digits_only(number)
    if emergency:
        if number.startswith("+") or not shortnumberinfo.is_emergency_number(digits, region):
            raise ResourceError(path, where, f"{number!r} is not an emergency number for {region} in "
                                "libphonenumber's metadata")
        return "short"
    full = phonenumbers.is_valid_number_for_region(parsed, region)
    short = not number.startswith("+") and shortnumberinfo.is_valid_short_number_for_region(parsed, region)
    if full or short:
        if acknowledged is not None:
            raise ResourceError(path, ack_where, f"libphonenumber knows {number!r}: remove "
                                "not_in_libphonenumber, so that a later typo cannot hide behind it")
        return "full" if full else "short"
    if acknowledged is None:
        raise ResourceError(path, where, f"{number!r} is not a valid number for {region} in libphonenumber's "
                            "metadata: check it for a typo. If it is real and libphonenumber does not know it "
                            "yet, add not_in_libphonenumber: with where it is published")
    if not (phonenumbers.is_possible_number(parsed)
            or shortnumberinfo.is_possible_short_number_for_region(parsed, region)):
        raise ResourceError(path, where, f"{number!r} does not even have a possible length for {region}; "
                            "an acknowledgement cannot cover that: check it for a typo")
    return "full" if len(phonenumbers.national_significant_number(parsed)) >= 7 else "short"


def _forms(number: str, region: str, kind: _Kind) -> set[str]:
    """Every digit string a response may write this number as; '+' marks the international forms."""
    parsed = phonenumbers.parse(number, region)
    code = str(parsed.country_code)
    if kind == "short":
        digits = digits_only(number)
        return {digits, f"+{code}{digits}"}
    nsn = phonenumbers.national_significant_number(parsed)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    trunk = (metadata.national_prefix if metadata else None) or ""
    # +44 (0)808... keeps the trunk 0 inside an international number; 1-800... is NANP's trunk 1.
    return {nsn, trunk + nsn, f"+{code}{nsn}", f"+{code}{trunk}{nsn}"}


def _check_not_future(path: Path, where: str, day: date) -> None:
    # One day of grace: a clinician west of UTC checking "today" may be a day behind the loader.
    if day > date.today() + timedelta(days=1):
        raise ResourceError(path, where, f"{day} is in the future; last_checked is the day the entry was "
                            "checked against a source")


def _load_region(path: Path, index: dict[str, list[NumberHit]], ids: dict[str, Path]) -> RegionResources:
    raw, spec = _read(path, RegionFile)
    assert isinstance(spec, RegionFile)
    code = spec.region
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ResourceError(path, "region", f"expected an upper-case ISO 3166-1 alpha-2 code such as GB, got "
                            f"{code!r}")
    if path.stem != code.lower():
        raise ResourceError(path, "region", f"the file for region {code} must be named {code.lower()}.yaml")

    def claim(ident: str, where: str) -> None:
        if ident in ids:
            raise ResourceError(path, where, f"id {ident!r} is already used in {ids[ident]}; ids are unique "
                                "across the registry")
        ids[ident] = path

    for i, e in enumerate(spec.emergency):
        where = _where(raw, ("emergency", i))
        _check_not_future(path, f"{where}.last_checked", e.last_checked)
        _check_number(path, f"{where}.number", e.number, code, emergency=True)
        ident = _emergency_id(code, e.number)
        claim(ident, f"{where}.number")
        for key in _forms(e.number, code, "short"):
            index.setdefault(key, []).append(NumberHit(ident, code, True))
    for i, s in enumerate(spec.services):
        where = _where(raw, ("services", i))
        claim(s.id, f"{where}.id")
        _check_not_future(path, f"{where}.last_checked", s.last_checked)
        for j, c in enumerate(s.contacts):
            cwhere = _where(raw, ("services", i, "contacts", j))
            kind = _check_number(path, f"{cwhere}.number", c.number, code, acknowledged=c.not_in_libphonenumber,
                                 ack_where=f"{cwhere}.not_in_libphonenumber")
            if c.vanity is not None and digits_only(phonenumbers.convert_alpha_characters_in_number(c.vanity)) \
                    != digits_only(c.number):
                raise ResourceError(path, f"{cwhere}.vanity", f"{c.vanity!r} does not spell {c.number!r}")
            for key in _forms(c.number, code, kind):
                index.setdefault(key, []).append(NumberHit(s.id, code, False))
    return RegionResources(code, spec.name, path, tuple(spec.services), tuple(spec.emergency))


def _load_global(path: Path, index: dict[str, list[NumberHit]], ids: dict[str, Path]) -> tuple[Guidance, ...]:
    raw, spec = _read(path, GlobalFile)
    assert isinstance(spec, GlobalFile)
    for i, g in enumerate(spec.guidance):
        where = _where(raw, ("guidance", i))
        if g.id in ids:
            raise ResourceError(path, f"{where}.id", f"id {g.id!r} is already used in {ids[g.id]}")
        ids[g.id] = path
        _check_not_future(path, f"{where}.last_checked", g.last_checked)
        if g.number is None:
            if g.emergency_in:
                raise ResourceError(path, f"{where}.emergency_in", "only meaningful with a number")
            continue
        if not g.emergency_in:
            raise ResourceError(path, f"{where}.emergency_in", "list the regions where this number is an "
                                "official emergency number, so the claim is checked")
        for region in g.emergency_in:
            _check_number(path, f"{where}.emergency_in", g.number, region, emergency=True)
        index.setdefault(digits_only(g.number), []).append(NumberHit(g.id, GLOBAL, True))
    return tuple(spec.guidance)


def _load(folder: Path) -> Registry:
    folder = folder.resolve()
    if not folder.is_dir():
        raise ResourceError(folder, "folder", "not found; a registry folder holds global.yaml and one "
                            "<region>.yaml per region")
    stray = sorted(folder.glob("*.yml"))
    if stray:  # silently skipping a file a clinician wrote would hide their entries
        raise ResourceError(stray[0], "file", "registry files end in .yaml; rename it")
    global_path = folder / GLOBAL_FILE
    if not global_path.is_file():
        raise ResourceError(global_path, "file", "not found; the registry needs the global guidance file")
    index: dict[str, list[NumberHit]] = {}
    ids: dict[str, Path] = {}
    regions: dict[str, RegionResources] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == GLOBAL_FILE:
            continue
        res = _load_region(path, index, ids)
        regions[res.code] = res
    if not regions:
        raise ResourceError(folder, "folder", "no region files (<region>.yaml) found")
    guidance = _load_global(global_path, index, ids)
    frozen = {key: tuple(hits) for key, hits in index.items()}
    return Registry(folder, MappingProxyType(regions), guidance, global_path, MappingProxyType(frozen))


@functools.lru_cache(maxsize=1)
def _builtin_registry() -> Registry:
    return _load(builtin_rubrics_dir() / RESOURCES_DIR)


def load_registry(folder: Path | None = None) -> Registry:
    """Load and fully check a registry folder; the built-in one (the default) is loaded once and cached."""
    return _builtin_registry() if folder is None else _load(folder)


# --- what a judge prompt gets ----------------------------------------------------------------------


def _contact_text(c: Contact) -> str:
    text = f"{c.keyword} to {c.number}" if c.keyword else c.number
    extras = [x for x in (c.vanity, c.label, c.hours) if x]
    return f"{text} ({'; '.join(extras)})" if extras else text


def service_context(s: Service) -> dict[str, Any]:
    """One service as plain, JSON-able values."""
    return {
        "id": s.id,
        "name": s.name,
        "populations": [p.value for p in s.populations],
        "call": [_contact_text(c) for c in s.contacts if c.channel is Channel.CALL],
        "text": [_contact_text(c) for c in s.contacts if c.channel is Channel.TEXT],
        "chat": s.chat_url,
        "hours": s.hours,
        "notes": s.notes,
    }


def prompt_context(region: str | None, registry: Registry | None = None) -> dict[str, Any]:
    """The crisis lines for the user's region as plain dicts and strings, for a sandboxed template. The same
    keys are present whether or not the region is known, so a template under StrictUndefined can branch
    on `known`."""
    registry = registry or load_registry()
    code = normalise_region(region)
    found = registry.regions.get(code) if code else None
    if found is None:
        where = f"{code} ({region_name(code)})" if code else "the user's region (unknown)"
        return {
            "known": False, "region": code, "region_name": region_name(code) if code else None,
            "emergency": [], "services": [],
            "global_guidance": [g.text for g in registry.global_guidance],
            "note": f"The registry has no crisis lines for {where}; globally valid guidance applies.",
        }
    return {
        "known": True, "region": found.code, "region_name": found.name,
        "emergency": [e.number for e in found.emergency],
        "services": [service_context(s) for s in found.services],
        "global_guidance": [],
        "note": "",
    }
