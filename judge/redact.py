"""Redaction of personal data before text leaves the machine.

Microsoft Presidio's pattern recognizers do the work a library does well: e-mail addresses, phone numbers
(libphonenumber), card numbers (Luhn), URLs, US SSN, UK National Insurance numbers, Canadian SINs, UK NHS
numbers (checksum), US Medicare MBIs and UK postcodes. Presidio runs here with its no-op NLP engine: no
spaCy language model can be installed offline, so there is no NER, and names, street addresses, dates of
birth and medical record numbers come from the patterns below, kept deliberately narrow (an introduction,
a title, a salutation, a known given name) so that ordinary words and every date are left alone.

Crisis-line numbers from the resource registry are never redacted: the rubrics check that a response
gives the right helpline. A found span whose digits equal a registry number's digits is dropped.

The mapping from placeholder back to original lives only in the Redactor object, in memory, for evidence
display; this module never writes it anywhere.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

__all__ = ["Found", "PiiKind", "Redaction", "Redactor", "registry_numbers"]


class PiiKind(StrEnum):
    PERSON = "PERSON"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    ADDRESS = "ADDRESS"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    NATIONAL_ID = "NATIONAL_ID"
    HEALTH_ID = "HEALTH_ID"
    URL = "URL"
    CARD = "CARD"


@dataclass
class Found:
    kind: PiiKind
    start: int  # offsets in the original text
    end: int
    placeholder: str
    source: str  # the recognizer that found it, for audits of what was hidden and why


@dataclass
class Redaction:
    text: str
    found: list[Found]


# --- Presidio -------------------------------------------------------------------------------------

# Presidio entity -> our kind, with the lowest score accepted without a context word before the match.
# Scores below the floor are the "weak" patterns (a bare 9-digit number may be an SSN): they count only
# when a context word precedes them, because the no-op NLP engine cannot do Presidio's own context boost.
_PRESIDIO: dict[str, tuple[PiiKind, float]] = {
    "EMAIL_ADDRESS": (PiiKind.EMAIL, 0.0),
    "PHONE_NUMBER": (PiiKind.PHONE, 0.0),
    "CREDIT_CARD": (PiiKind.CARD, 0.0),
    "URL": (PiiKind.URL, 0.0),
    "US_SSN": (PiiKind.NATIONAL_ID, 0.5),
    "UK_NINO": (PiiKind.NATIONAL_ID, 0.0),
    "CA_SIN": (PiiKind.NATIONAL_ID, 0.5),
    "UK_NHS": (PiiKind.HEALTH_ID, 0.0),
    "US_MBI": (PiiKind.HEALTH_ID, 0.0),
    "UK_POSTCODE": (PiiKind.ADDRESS, 0.0),  # the pattern is strict enough on its own
}
_CONTEXT: dict[str, tuple[str, ...]] = {
    "US_SSN": ("ssn", "social security", "social-security"),
    "CA_SIN": ("sin", "social insurance"),
}
_PHONE_REGIONS = ("US", "GB", "CA", "AU", "IE", "NZ", "IN", "DE", "FR")


@functools.cache
def _analyzer() -> AnalyzerEngine:
    # Imported here: spaCy (under Presidio) takes seconds to import, and most commands never redact.
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CaSinRecognizer,
        CreditCardRecognizer,
        EmailRecognizer,
        NhsRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UkPostcodeRecognizer,
        UrlRecognizer,
        UsMbiRecognizer,
        UsSsnRecognizer,
    )

    # Presidio's e-mail check calls tldextract's default extractor, which downloads the public suffix
    # list on first use. This one reads the snapshot bundled with tldextract and writes no cache.
    offline = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(offline(pattern_text).fqdn)

    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
    engine.load()
    registry = RecognizerRegistry(recognizers=[
        OfflineEmailRecognizer(), PhoneRecognizer(supported_regions=_PHONE_REGIONS), CreditCardRecognizer(),
        UrlRecognizer(), UsSsnRecognizer(), UkNinoRecognizer(), CaSinRecognizer(), NhsRecognizer(),
        UsMbiRecognizer(), UkPostcodeRecognizer(),
    ])
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


_POSTCODE = re.compile(r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}")


def _presidio(text: str) -> Iterator[tuple[PiiKind, int, int, str]]:
    for r in _analyzer().analyze(text, language="en", entities=list(_PRESIDIO), score_threshold=0.0):
        kind, floor = _PRESIDIO[r.entity_type]
        if r.score < floor:
            before = text[max(0, r.start - 40):r.start].lower()
            if not any(word in before for word in _CONTEXT.get(r.entity_type, ())):
                continue
        value = text[r.start:r.end]
        if kind is PiiKind.URL and not _personal_url(value):
            continue
        # Presidio's postcode pattern ignores case, so leetspeak ("pr0 4na") fits it; a written postcode
        # is upper case. A phone number has at least seven digits ("130–180" is a range, not a number).
        if r.entity_type == "UK_POSTCODE" and not _POSTCODE.fullmatch(value):
            continue
        if kind is PiiKind.PHONE and len(_digits(value)) < 7:
            continue
        yield kind, r.start, r.end, f"presidio:{r.entity_type}"


# --- URLs: only the personal ones ----------------------------------------------------------------

_SOCIAL = ("facebook.com", "instagram.com", "twitter.com", "x.com", "tiktok.com", "linkedin.com",
           "reddit.com", "youtube.com", "snapchat.com", "threads.net", "github.com", "pinterest.com",
           "tumblr.com", "medium.com", "onlyfans.com", "discord.gg", "t.me", "wa.me", "venmo.com", "paypal.me")
_PROFILE_SEGMENTS = {"u", "user", "users", "profile", "profiles", "in", "people", "member", "members", "patient",
                     "patients", "account", "accounts", "id"}
_PERSONAL_KEYS = {"user", "username", "uid", "userid", "user_id", "id", "email", "name", "token", "session",
                  "sid", "patient", "patient_id", "account", "member", "mrn", "dob", "phone", "ref"}


def _personal_url(url: str) -> bool:
    """A URL is personal when its path or query names someone: a profile on a social site, a /user/...
    path, an e-mail, an id-like token, or a query key such as ?user=. A helpline's page is not."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = (parts.hostname or "").removeprefix("www.").removeprefix("m.")
    segments = [s for s in parts.path.split("/") if s]
    if any(key.lower() in _PERSONAL_KEYS for key, _ in parse_qsl(parts.query)):
        return True
    if host in _SOCIAL and segments:
        return True
    for i, seg in enumerate(segments):
        if seg.startswith("@") or "@" in seg or "~" in seg[:1]:
            return True
        if seg.lower() in _PROFILE_SEGMENTS and i + 1 < len(segments):
            return True
        if re.fullmatch(r"\d{5,}|[0-9a-fA-F-]{16,}|(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{12,}", seg):
            return True
    return False


# --- names ----------------------------------------------------------------------------------------

# Common given names (UK, US, Canada, Australia, Ireland). Names that are also everyday English words
# (Hope, Grace, Will, May, Bill, Rose, Joy...) and the pro-ana / pro-mia
# code names (Ana, Mia), which the eating-disorder rubric must see, are left out: they are only caught after
# an introduction.
_GIVEN = frozenset("""
aaron abdul abigail adam adrian ahmed aidan aisha alan albert alex alexander alexandra alice alicia alison
amanda amber amelia amy andrea andrew angela anna anne annie anthony antonio archie arthur ashley
barbara beatrice ben benjamin beth bethany brandon brenda brian brittany bruce caitlin callum cameron
carl carlos carol caroline catherine charlie charlotte chloe chris christina christine christopher claire
connor craig cynthia daniel danielle darren david deborah debra declan denise dennis derek diana diane
dominic donald donna dylan edward eleanor elena elijah elizabeth ella ellie emily emma eric erin ethan
evelyn fatima fiona frances francesca freddie gary gavin george georgia gemma gillian gloria gregory
hannah harriet harry heather helen henry holly hugo ian imogen isaac isabel isabella isla jack jacob
jacqueline jake james jamie janet janice jasmine jason jayden jeffrey jennifer jeremy jesse jessica joan
joanne joe joel john jonathan jordan jose joseph joshua joyce juan judith julia julie justin karen
katherine kathleen kathryn katie kayla keith kelly kenneth kevin kieran kimberly kyle laura lauren leah
leo liam lily linda lisa logan louis louise lucas lucy luke lydia madison maria marie marilyn martha
martin mary matilda matthew megan melissa michael michelle mohammed muhammad natalie nathan nicholas
nicola nicole niamh noah oliver olivia oscar owen paige pamela patricia patrick paul paula peter philip
phoebe priya rachel rebecca rhys richard robert robyn ronald ruby russell ruth ryan samantha samuel sandra
sarah scott sean sebastian sharon shirley siobhan sophia sophie stephanie stephen steven susan tanya
teresa thomas timothy tom tyler valerie vanessa victoria vincent wayne william zachary zara zoe
""".split())
# Capitalised words that follow "I'm" or "my name is" far more often as states than as names.
_NOT_NAMES = frozenset("""
a an the i im not so just very really still feeling fine okay ok sorry scared afraid alone tired done
sad depressed suicidal anxious worried going trying thinking here there back home sure glad happy
english british american canadian australian irish scottish welsh christian muslim jewish catholic
monday tuesday wednesday thursday friday saturday sunday january february march april may june july
august september october november december god dr mr mrs ms miss
""".split())
_CAP = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"
_FULL = rf"{_CAP}(?:\s+{_CAP})?"
_NAME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name:introduction", re.compile(rf"(?i:\bmy name is|\bmy name's|\bcall me|\bi go by|\bnamed|\bcalled|"
                                     rf"\bthis is)\s+({_FULL})")),
    ("name:im", re.compile(rf"(?i:\bi'm|\bi am|\bit's)\s+({_FULL})")),
    ("name:title", re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Doctor|Nurse)\.?\s+({_FULL})")),
    ("name:salutation", re.compile(rf"(?m)^\s*(?:Dear|Hi|Hello|Hey)\s+({_FULL})\b")),
    ("name:signoff", re.compile(r"(?i:\b(?:thanks|thank you|regards|love|cheers|best|sincerely|xx+)),?\s*\n?\s*-?\s*"
                                rf"({_FULL})\s*$")),
    ("name:relation", re.compile(rf"(?i:\bmy\s+(?:therapist|counsellor|counselor|psychiatrist|doctor|gp|nurse|"
                                 rf"social worker|key worker|case worker|friend|best friend|boyfriend|girlfriend|"
                                 rf"partner|husband|wife|mum|mom|dad|father|mother|sister|brother|son|daughter|"
                                 rf"aunt|uncle|cousin|teacher|coach|roommate|flatmate|ex))\s*,?\s+({_FULL})")),
)
# Each capitalised word is tried (the lookahead does not consume the surname), so "Yesterday Oliver
# Hartley" still reaches "Oliver".
_GIVEN_RE = re.compile(rf"\b({_CAP})\b(?=(\s+{_CAP}\b)?)")


def _is_name(span: str, known: bool) -> bool:
    first = span.split()[0]
    if first.lower().replace("'", "") in _NOT_NAMES:
        return False
    return known or first.lower() in _GIVEN


def _names(text: str) -> Iterator[tuple[PiiKind, int, int, str]]:
    for source, pattern in _NAME_PATTERNS:
        for m in pattern.finditer(text):
            # "I'm X" is too often "I'm Scared"-shaped: there, only a known given name counts.
            if _is_name(m.group(1), known=source not in ("name:im",)):
                start, end = m.span(1)
                words = m.group(1).split()
                if len(words) == 2 and words[1].lower() in _NOT_NAMES:
                    end = start + len(words[0])
                yield PiiKind.PERSON, start, end, source
    for m in _GIVEN_RE.finditer(text):
        if m.group(1).lower() in _GIVEN:
            last = m.group(2)
            end = m.end(1) + len(last) if last and last.strip().lower() not in _NOT_NAMES else m.end(1)
            yield PiiKind.PERSON, m.start(), end, "name:given_names"


# --- addresses, dates of birth, ids ---------------------------------------------------------------

_STREET_TYPES = (r"Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Close|Court|Ct|Way|Place|Pl|Boulevard|Blvd|"
                 r"Crescent|Cres|Terrace|Gardens|Grove|Square|Sq|Row|Parkway|Pkwy|Circle|Cir|Mews|Walk|Highway|Hwy")
_ADDRESS = re.compile(
    rf"\b(?:(?:Flat|Apt\.?|Apartment|Unit|Suite)\s+\w{{1,5}},?\s+)?\d{{1,5}}[A-Za-z]?,?\s+(?:{_CAP}\s+){{1,3}}"
    rf"(?:{_STREET_TYPES})\b\.?"
    rf"(?:,?\s+(?:Apt\.?|Unit|Suite|#)\s*\w{{1,5}})?"  # US unit after the street
    rf"(?:,\s*{_CAP}(?:\s+{_CAP}){{0,2}})?"  # town
    r"(?:,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?)?")  # US state and ZIP
_STATE_ZIP = re.compile(rf"\b{_CAP}(?:\s+{_CAP})?,\s+[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?\b")

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})|\d{{4}}-\d{{2}}-\d{{2}}|"
         rf"\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})")
# A date counts as a date of birth only next to a word that says so: other dates (an appointment, the
# day a feeling started) are not personal identifiers and the judge may need them.
_DOB = re.compile(rf"(?i:\b(?:born(?:\s+on)?|d\.?o\.?b\.?|date of birth|birth\s?date|birthday(?:\s+is)?|b\.)"
                  rf"\s*(?:is|was|:|-|=)?\s*)({_DATE})")
_MRN = re.compile(r"(?i:\b(?:mrn|medical record(?: number| no\.?)?|patient (?:id|number|no\.?)|"
                  r"hospital (?:number|no\.?)"
                  r"|chi(?: number)?|nhi(?: number)?|health card(?: number)?|medicaid(?: id| number)?|"
                  r"member id|insurance id)\s*(?:#|:|is|no\.?|number)?\s*)([A-Z0-9][A-Z0-9-]{3,15}\d)\b")
_SSN_CONTEXT = re.compile(r"(?i:\b(?:ssn|social security(?: number)?|sin|social insurance(?: number)?|"
                          r"pps(?:n| number)?|national insurance(?: number)?|ni number|tfn|tax file number)"
                          r"\s*(?:#|:|is|no\.?)?\s*)"
                          r"(\d{3}[- ]?\d{2,3}[- ]?\d{3,4}|\d{7}[A-Z]{1,2}|[A-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D])\b")


# Presidio validates an address's domain against the public suffix list, so one under a suffix that is
# itself a registry (name@school.sch.uk) is skipped there; any user@host.tld shape is personal here.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Presidio's card pattern predates Mastercard's 2-series; any 13-19 digit Luhn-valid run counts.
_CARD = re.compile(r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-])")


def _luhn(number: str) -> bool:
    digits = [int(c) for c in reversed(_digits(number))]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return 13 <= len(digits) <= 19 and total % 10 == 0


def _patterns(text: str) -> Iterator[tuple[PiiKind, int, int, str]]:
    yield from _names(text)
    for m in _EMAIL.finditer(text):
        yield PiiKind.EMAIL, m.start(), m.end(), "email:shape"
    for m in _CARD.finditer(text):
        if _luhn(m.group(0)):
            yield PiiKind.CARD, m.start(), m.end(), "card:luhn"
    for m in _ADDRESS.finditer(text):
        yield PiiKind.ADDRESS, m.start(), m.end(), "address:street"
    for m in _STATE_ZIP.finditer(text):
        yield PiiKind.ADDRESS, m.start(), m.end(), "address:state_zip"
    for m in _DOB.finditer(text):
        yield PiiKind.DATE_OF_BIRTH, m.start(1), m.end(1), "dob:keyword"
    for m in _MRN.finditer(text):
        yield PiiKind.HEALTH_ID, m.start(1), m.end(1), "health_id:keyword"
    for m in _SSN_CONTEXT.finditer(text):
        yield PiiKind.NATIONAL_ID, m.start(1), m.end(1), "national_id:keyword"


# --- the redactor ---------------------------------------------------------------------------------

# A more specific kind wins over a generic one at the same length: an NHS number is also a valid phone
# number to libphonenumber, and a date of birth must not be left to a looser match.
_PRIORITY = {PiiKind.HEALTH_ID: 0, PiiKind.NATIONAL_ID: 1, PiiKind.CARD: 2, PiiKind.DATE_OF_BIRTH: 3,
             PiiKind.EMAIL: 4, PiiKind.URL: 5, PiiKind.ADDRESS: 6, PiiKind.PHONE: 7, PiiKind.PERSON: 8}
_PLACEHOLDER = re.compile(r"\[(" + "|".join(k.value for k in PiiKind) + r")_(\d+)\]")


_NUMBER_RUN = re.compile(r"\+?\(?\d[\d\s().-]*\d|\d")
_GROUP = re.compile(r"\+?\d+")


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@functools.cache
def registry_numbers() -> frozenset[str]:
    """The digits of every form of every crisis-line and emergency number in the built-in registry."""
    from judge.resources import load_registry

    return frozenset(_digits(form) for form in load_registry()._index)  # the registry's own form index


def _select(spans: list[tuple[PiiKind, int, int, str]]) -> list[tuple[PiiKind, int, int, str]]:
    """Non-overlapping spans: the longest first, then the most specific kind."""
    chosen: list[tuple[PiiKind, int, int, str]] = []
    for span in sorted(spans, key=lambda s: (-(s[2] - s[1]), _PRIORITY[s[0]], s[1])):
        if all(span[2] <= c[1] or span[1] >= c[2] for c in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s[1])


@dataclass
class Redactor:
    """Replaces personal data with typed placeholders, remembering the originals in memory only."""

    keep: Iterable[str] | None = None
    mapping: dict[str, str] = field(default_factory=dict, init=False)
    _by_original: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[PiiKind, int] = field(default_factory=dict, init=False, repr=False)
    _keep_digits: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        numbers = registry_numbers() if self.keep is None else frozenset(_digits(n) for n in self.keep)
        self._keep_digits = frozenset(n for n in numbers if n)

    def _kept(self, original: str) -> bool:
        digits = _digits(original)
        return bool(digits) and digits in self._keep_digits

    def _protected(self, text: str) -> list[tuple[int, int]]:
        """Where registry numbers stand in the text. A recognizer may match only part of one (the UK NHS
        pattern fits the last ten digits of 1-800-891-4416), so each run of digit groups is tried whole
        and as every sub-run of its groups."""
        spans: list[tuple[int, int]] = []
        for run in _NUMBER_RUN.finditer(text):
            groups = [(g.start() + run.start(), g.end() + run.start()) for g in _GROUP.finditer(run.group(0))]
            for i in range(len(groups)):
                for j in range(i, len(groups)):
                    start, end = groups[i][0], groups[j][1]
                    if self._kept(text[start:end]):
                        spans.append((start, end))
        return spans

    def _placeholder(self, kind: PiiKind, original: str) -> str:
        if original not in self._by_original:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            placeholder = f"[{kind.value}_{self._counts[kind]}]"
            self._by_original[original] = placeholder
            self.mapping[placeholder] = original
        return self._by_original[original]

    def redact(self, text: str) -> Redaction:
        spans = [s for s in (*_presidio(text), *_patterns(text)) if s[2] > s[1]]
        protected = self._protected(text)
        spans = [s for s in spans if not self._kept(text[s[1]:s[2]]) and not _PLACEHOLDER.fullmatch(text[s[1]:s[2]])
                 and not any(s[1] < end and s[2] > start for start, end in protected)]
        out: list[str] = []
        found: list[Found] = []
        cursor = 0
        for kind, start, end, source in _select(spans):
            placeholder = self._placeholder(kind, text[start:end])
            out.append(text[cursor:start])
            out.append(placeholder)
            found.append(Found(kind, start, end, placeholder, source))
            cursor = end
        out.append(text[cursor:])
        return Redaction("".join(out), found)

    def redact_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**m, "content": self.redact(m["content"]).text} if isinstance(m.get("content"), str) else dict(m)
                for m in messages]

    def restore(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.mapping.get(m.group(0), m.group(0)), text)
