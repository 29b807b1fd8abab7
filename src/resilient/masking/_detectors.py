"""What a secret looks like: the first-party detectors and the checksum validators.

A :class:`Detector` is a regular expression for one kind of secret (or
personal data), the part of a match to replace, and optionally a validator
that confirms a candidate (Luhn for card numbers, mod-97 for IBANs) so that
look-alikes are left alone. Detectors never use named groups or
backreferences: a pattern must keep its meaning when the engine compiles
it among others (one alternation renumbers groups), as it did until 2026-12
and may again.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigurationError

# re's parser, which finds backreferences in a pattern; from 3.11 on, importing it as sre_parse warns.
if sys.version_info >= (3, 11):
    from re import _parser as _sre_parse
else:
    import sre_parse as _sre_parse

__all__ = ["Detector", "default_detectors", "iban_valid", "luhn_valid"]

_Starts = Callable[[str], list[int]]


@dataclass(frozen=True)
class Detector:
    """One kind of secret.

    ``pattern`` is a regular expression (standard :mod:`re` syntax, no named
    groups). ``secret_groups`` are the numbers of the pattern's groups that
    hold the secret, first matched wins; ``0`` (the default) replaces the
    whole match, so ``password=`` can be kept while its value is replaced.
    Backreferences (``\\1``, ``(?P=name)``, ``(?(1)...)``) are refused like named
    groups (:class:`~resilient.errors.ConfigurationError`): the engine renumbers groups.
    ``validator`` receives the secret text and returns ``False`` to leave a
    candidate as it is. ``flags`` apply to the pattern alone (as an inline
    group), so one detector may be case-insensitive and the next not.
    ``anchors`` are lower-case strings one of which every match contains
    (``"sk-ant-"``, ``"@"``): a text whose lower-cased form contains none of
    them skips the detector. No anchors: the detector always runs. An anchor
    that some match lacks makes the detector miss it, so keep them loose.
    ``gate`` is a regular expression that every text holding a match also
    matches (a run of 11 digits and separators, for card numbers): for
    detectors no literal anchors, it is searched first (once per distinct
    gate) and the detector is skipped where it finds nothing.
    ``extend_left`` (a character-class body such as ``A-Za-z0-9._%+-``)
    lets a pattern start at a literal in the middle of its secret (``@`` of
    an e-mail address), which the engine finds fast: the secret then runs
    left over up to ``extend_left_max`` such characters, at least one.
    """

    name: str
    pattern: str
    secret_groups: tuple[int, ...] = (0,)
    validator: Callable[[str], bool] | None = None
    flags: int = 0
    description: str = ""
    anchors: tuple[str, ...] = ()
    gate: str = ""
    extend_left: str = ""
    extend_left_max: int = 64

    def __post_init__(self) -> None:
        if any(a != a.lower() or not a for a in self.anchors):
            raise ValueError(f"detector {self.name!r}: anchors must be non-empty lower-case strings")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"detector name {self.name!r} must be lower_snake_case")
        compiled = re.compile(self.pattern, self.flags)
        try:
            # What the engine compiles: a pattern fine alone can fail there, e.g. one starting with global
            # flags ("(?i)..."), and would then fail every text it is tried on.
            re.compile(_alternative(self.pattern, self.flags))
        except re.error as exc:
            raise ValueError(
                f"detector {self.name!r}: the pattern does not compile as a group ({exc}); give flags with "
                "flags= or a scoped group such as (?i:...)"
            ) from None
        problem = _group_problem(self.pattern, self.flags)
        if problem:
            raise ConfigurationError(f"detector {self.name!r} pattern", self.pattern, problem)
        if self.gate:
            re.compile(self.gate)
        if self.extend_left:
            re.compile(f"[{self.extend_left}]")
            if self.secret_groups != (0,):
                raise ValueError(f"detector {self.name!r}: extend_left needs the whole match as the secret")
        for g in self.secret_groups:
            if not 0 <= g <= compiled.groups:
                raise ValueError(f"detector {self.name!r}: no group {g} in its pattern")

    @property
    def groups(self) -> int:
        return re.compile(self.pattern, self.flags).groups


def _alternative(pattern: str, flags: int) -> str:
    """``pattern`` as the engine compiles it, alone or joined with others: one group with its flags inline.

    Under VERBOSE a comment on the pattern's last line would run over the closing parenthesis; the newline
    before it ends the comment (and is ignored otherwise).
    """
    inline = _inline_flags(flags)
    if "x" in inline:
        return f"(?{inline}:{pattern}\n)"
    return f"(?{inline}:{pattern})" if inline else f"(?:{pattern})"


#: What a pattern may not hold, and why: said by every error that refuses one.
_GROUPS_ALLOWED = (
    "a pattern may hold no named groups ((?P<name>...)) and no backreferences (\\1, (?P=name), (?(1)...|...)): "
    "a pattern compiled among others (one alternation) has its groups renumbered; use plain groups"
)


def _group_problem(pattern: str, flags: int) -> str:
    """Why ``pattern`` cannot be joined with others (its named groups, its backreferences), or ``""``.

    The pattern must compile as :func:`_alternative` writes it. Backreferences are found in the parsed
    pattern, not its text: ``[\\1]`` (a character class) and ``\\\\1`` (a backslash, then 1) are none.
    """
    found = [
        what
        for what, present in (
            ("a named group", bool(re.compile(pattern, flags).groupindex)),
            ("a backreference", _refers_back(_sre_parse.parse(_alternative(pattern, flags)))),
        )
        if present
    ]
    return f"it has {' and '.join(found)}; {_GROUPS_ALLOWED}" if found else ""


def _refers_back(parsed: _sre_parse.SubPattern) -> bool:
    """Whether the parsed pattern matches a group's text again or tests whether a group took part."""
    refs = (_sre_parse.GROUPREF, _sre_parse.GROUPREF_EXISTS)
    todo: list[object] = [parsed]
    while todo:
        item = todo.pop()
        if isinstance(item, _sre_parse.SubPattern):
            for op, av in item.data:
                if op in refs:
                    return True
                todo.append(av)
        elif isinstance(item, (tuple, list)):  # the arguments of an opcode: groups, branches, repeated items
            todo.extend(item)
    return False


def _inline_flags(flags: int) -> str:
    letters = ""
    for flag, letter in ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x")):
        if flags & flag:
            letters += letter
    return letters


def luhn_valid(text: str) -> bool:
    """True when the digits of ``text`` pass the Luhn check (card numbers)."""
    # isdecimal, not isdigit: int() rejects superscripts and other digits that are not decimal ("²").
    digits = [int(c) for c in text if c.isdecimal()]
    if len(digits) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Lengths of IBANs per country (ISO 13616 registry), used to reject look-alikes early.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(text: str) -> bool:
    """True when ``text`` (spaces allowed) is an IBAN of its country's length with a valid mod-97 checksum."""
    compact = text.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _iban_candidate(text: str) -> bool:
    # The pattern's last, partial group is optional and takes a short number that follows a full IBAN
    # ("ES82 0000 ... 0000 7", "ES8200...00 7"): the match fails the checksum though an IBAN is in it.
    # Then the IBAN without that group decides, and the number goes with it (masking more, never less).
    if iban_valid(text):
        return True
    head, space, _ = text.rpartition(" ")
    return bool(space) and iban_valid(head)


def _card_valid(text: str) -> bool:
    digits = "".join(c for c in text if c.isdecimal())
    if digits[:1] == "2" and not 2221 <= int(digits[:4]) <= 2720:  # Mastercard's 2-series; other 2s are not cards
        return False
    return luhn_valid(digits)


def _phone_valid(text: str) -> bool:
    # At least 7 digits; no upper bound, so a number followed by more digit groups is still masked whole.
    return sum(c.isdigit() for c in text) >= 7


# A token starts where the previous character cannot continue it. The check comes after the
# token's first character (a two-character lookbehind) so that the pattern starts with a literal:
# the regex engine then skips an alternative at a position whose character cannot start it.
_B = r"(?<![A-Za-z0-9_\-].)"
_E = r"(?![A-Za-z0-9_\-])"


def _ci(word: str) -> str:
    """``word`` matched in any case, written as ``[Tt][Oo]...``: unlike ``(?i:token)`` it starts with a
    character set, which lets the engine skip the alternative at once where it cannot start."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# Key names whose value is a secret, for key=value, key: value and JSON: a key *ending* in one of
# these (client_secret, db_password, X-Api-Key, csrftoken). Each is a fixed-width lookbehind at the
# end of the whole key, so the key is scanned once from its first character (no lazy prefix that
# retries every name at every offset, and no 27-way alternation tried at every position: both
# measured 4x slower); ``max_tokens`` does not end in one.
_SECRET_SUFFIXES = (
    "token", "secret", "password", "passwd", "pwd", "passphrase", "credential", "credentials", "cookie",
    "api_key", "api-key", "apikey", "access_key", "access-key", "accesskey", "secret_key", "secret-key",
    "secretkey", "private_key", "private-key", "privatekey", "hmac_key", "signing_key", "session_id",
    "session-id", "sessionid", "auth",
)  # fmt: skip
# The key is matched possessively (Python 3.11+), so a key that does not end in a secret name fails
# at once instead of backtracking through its prefixes; 3.10 backtracks (same result, slower).
_POSSESSIVE = "+" if sys.version_info >= (3, 11) else ""
# Most words are not followed by a separator: that cheap lookahead comes before the name lookbehinds.
_SEPARATOR = r"[\"']?\s{0,5}(?:[:=]|=>)"
_SECRET_KEY = (
    r"[A-Za-z_](?<![A-Za-z0-9_\-].)[A-Za-z0-9_\-]{0,80}" + _POSSESSIVE + "(?=" + _SEPARATOR + ")"
    r"(?i:" + "|".join(f"(?<={re.escape(n)})" for n in _SECRET_SUFFIXES) + ")"
)


def _trie(words: list[str]) -> str:
    """A pattern that matches where one of ``words`` starts, with shared first characters factored out
    (``re`` tries an alternation branch by branch, and under IGNORECASE without its quick first-character
    skip). Where one word ends, the longer ones are dropped: only whether one matches is asked."""
    if "" in words:
        return ""
    heads = sorted({w[0] for w in words})
    branches = [re.escape(h) + _trie([w[1:] for w in words if w[0] == h]) for h in heads]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


# Where a secret_assignment match can start, found from its separator: its pattern starts at every word,
# which re tries one by one (22 MB/s on a clean log); separators are far fewer. In the reversed text a
# separator is followed by up to 5 spaces, an optional quote and the key's name backwards, whose suffix is
# checked as the pattern's lookbehinds check it (same case folding); the maximal run of key characters
# then ends where the key starts. Every start the pattern matches at is found (a key is its whole word and
# each separator ends at most one key); the pattern itself then decides there.
# One pattern per separator character, so that each starts with a literal (see _SPLITS).
_KEYS_BEFORE_SEPARATOR = tuple(
    re.compile(c + r"\s{0,5}[\"']?(?=(?i:" + _trie([n[::-1] for n in _SECRET_SUFFIXES]) + r"))[A-Za-z0-9_\-]+").finditer
    for c in ":="
)


def _secret_assignment_starts(text: str) -> list[int]:
    size = len(text)
    backwards = text[::-1]
    colons, equals = (finditer(backwards) for finditer in _KEYS_BEFORE_SEPARATOR)
    return sorted([size - m.end() for m in colons] + [size - m.end() for m in equals])


# A value after a secret key name: double-quoted (JSON, with escapes), single-quoted (Python repr), or bare.
_VALUE = r"""(?:"((?:[^"\\\n]|\\.){1,4096})"|'((?:[^'\\\n]|\\.){1,4096})'|([^\s"',;&)}\]]{1,4096}))"""

_SECRET_ASSIGNMENT = _SECRET_KEY + _SEPARATOR + r"\s{0,5}" + _VALUE

# Header names, then the value after a separator and an optional scheme.
_AUTHORIZATION_VALUE = (
    r"(?i:[\"']?\s{0,5}[:=]\s{0,5}[\"']?(?:(?:bearer|basic|token|digest|apikey)\s{1,5})?)"
    r"([^\s\"',;)}\]]{1,4096})"
)
_AUTHORIZATION = (
    "(?:"
    + _ci("authorization")
    + r"(?<![A-Za-z0-9_\-].{13})|"
    + _ci("proxy-authorization")
    + r"(?<![A-Za-z0-9_\-].{19}))"
    + _AUTHORIZATION_VALUE
)
_BEARER_VALUE = r"\s{1,5}([A-Za-z0-9._~+/\-]{8,4096}=*)(?![A-Za-z0-9._~+/=\-])"
_BEARER = (
    "(?:" + _ci("bearer") + r"(?<![A-Za-z0-9_\-].{6})|" + _ci("basic") + r"(?<![A-Za-z0-9_\-].{5}))" + _BEARER_VALUE
)
_QUERY_KEYS = (
    r"(?:key|api[_-]?key|apikey|access[_-]?token|token|auth|sig|signature|secret|password|"
    r"client[_-]?secret|x-goog-api-key|x-amz-signature|x-amz-credential|x-amz-security-token|code)="
)
_QUERY_VALUE = r"([^&\s#\"'<>]{1,4096})"
_URL_QUERY = r"(?i:[?&]" + _QUERY_KEYS + ")" + _QUERY_VALUE

_CARD_REST = r"(?<![A-Za-z0-9_\-].)[0-9](?:[ \-]?[0-9]){11,17}(?![A-Za-z0-9_])"
_CARD = "[2-6]" + _CARD_REST
_PHONE = (
    r"[+(0-9](?<![A-Za-z0-9+\-].)"
    r"(?:(?<=\+)[1-9][0-9]{0,2}[ .\-]?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,4}){1,4}"
    r"|(?<=\()[0-9]{3}\)[ .\-]?[0-9]{3}[ .\-][0-9]{4}"
    r"|(?<=[0-9])[0-9]{2}[.\-][0-9]{3}[.\-][0-9]{4})(?![A-Za-z0-9_])"
)

# The same patterns split by their first character, each part starting with a literal: re scans for a
# literal character in a tight loop, but for a character set it runs its set matcher at every position
# (about 150 MB/s whatever the set, measured, against 2,000+ for a literal). A match of the pattern
# starts with one of these characters, and the part for that character matches it the same.
_SPLITS: dict[str, tuple[str, ...]] = {
    _AUTHORIZATION: tuple(
        c + _ci(rest) + behind + _AUTHORIZATION_VALUE
        for c, rest, behind in (
            ("a", "uthorization", r"(?<![A-Za-z0-9_\-].{13})"),
            ("A", "uthorization", r"(?<![A-Za-z0-9_\-].{13})"),
            ("p", "roxy-authorization", r"(?<![A-Za-z0-9_\-].{19})"),
            ("P", "roxy-authorization", r"(?<![A-Za-z0-9_\-].{19})"),
        )
    ),
    _BEARER: tuple(
        c
        + "(?:"
        + _ci("earer")
        + r"(?<![A-Za-z0-9_\-].{6})|"
        + _ci("asic")
        + r"(?<![A-Za-z0-9_\-].{5}))"
        + _BEARER_VALUE
        for c in "bB"
    ),
    _URL_QUERY: tuple(re.escape(c) + "(?i:" + _QUERY_KEYS + ")" + _QUERY_VALUE for c in "?&"),
    _CARD: tuple(c + _CARD_REST for c in "23456"),
}

# Where a phone number can start, each form found from a literal: "+" and a digit; "(", three digits and
# ")"; or the first dot or dash of 555-123-4567, three digits before it and three after (the start is
# then three back). The pattern starts at every digit otherwise, and log lines are full of digits.
_PHONE_PARTS = (
    (re.compile(r"\+[1-9]").finditer, 0),
    (re.compile(r"\([0-9]{3}\)").finditer, 0),
    (re.compile(r"-(?<=[0-9]{3}-)[0-9]{3}").finditer, 3),
    (re.compile(r"\.(?<=[0-9]{3}\.)[0-9]{3}").finditer, 3),
)


def _phone_starts(text: str) -> list[int]:
    return sorted([m.start() - back for finditer, back in _PHONE_PARTS for m in finditer(text)])


def _build() -> tuple[Detector, ...]:
    return (
        Detector(
            "pem_private_key",
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:(?s:.){0,65536}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]{0,65536})",
            description="PEM private keys (RSA, EC, OPENSSH, PKCS#8, encrypted), whole block; a block cut short is "
            "masked to the end of its base64",
        ),
        Detector(
            "anthropic_api_key",
            r"s" + _B + r"k-ant-(?:api|admin|oat|sid)[0-9]{2}-[A-Za-z0-9_\-]{20,300}" + _E,
            description="Anthropic API and admin keys (sk-ant-api03-..., sk-ant-admin01-...)",
        ),
        Detector(
            "openai_api_key",
            r"s" + _B + r"k-(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,300}|[A-Za-z0-9]{32,200})" + _E,
            description="OpenAI keys: project, service-account, admin and legacy sk- keys",
        ),
        Detector("google_api_key", r"A" + _B + r"Iza[0-9A-Za-z_\-]{35}" + _E, description="Google API keys (Gemini)"),
        Detector(
            "aws_access_key_id",
            r"A(?<![A-Z0-9].)(?:KIA|SIA|BIA|CCA)[A-Z2-7]{16}(?![A-Z0-9])",
            description="AWS access key ids (AKIA long-term, ASIA temporary; not role or user ids, which are not "
            "credentials)",
        ),
        Detector(
            "aws_secret_access_key",
            "(?:"
            + "|".join(
                _ci(n) for n in ("aws_secret_access_key", "awssecretaccesskey", "aws_secret_key", "secretaccesskey")
            )
            + ")"
            r"[\"']?\s{0,5}[:=]\s{0,5}[\"']?"
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
            secret_groups=(1,),
            description="AWS secret access keys, by their key name (they have no prefix of their own)",
        ),
        Detector(
            "github_token",
            r"g" + _B + r"(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{22,255})" + _E,
            description="GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)",
        ),
        Detector(
            "gitlab_token",
            r"g" + _B + r"l(?:pat|dt|rt|ptt|ft|imt|soat|cbt|oas)-[A-Za-z0-9_\-]{20,64}" + _E,
            description="GitLab tokens (glpat-, gldt-, glrt-, ...)",
        ),
        Detector(
            "slack_token",
            r"x" + _B + r"(?:ox[abposre]-[A-Za-z0-9\-]{10,250}|app-[0-9]-[A-Za-z0-9\-]{10,250})" + _E,
            description="Slack bot, user, app and refresh tokens",
        ),
        Detector(
            "slack_webhook",
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,200}",
            description="Slack incoming-webhook URLs",
        ),
        Detector(
            "stripe_key",
            r"[srw]" + _B + r"(?:(?<=[sr])k_(?:live|test)_[A-Za-z0-9]{16,247}|(?<=w)hsec_[A-Za-z0-9]{24,64})" + _E,
            description="Stripe secret and restricted keys, webhook signing secrets (publishable pk_ keys are public)",
        ),
        Detector("twilio_api_key", r"S" + _B + r"K[0-9a-fA-F]{32}" + _E, description="Twilio API key SIDs (SK...)"),
        Detector(
            "sendgrid_api_key",
            r"S" + _B + r"G\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + _E,
            description="SendGrid API keys",
        ),
        Detector("huggingface_token", r"h" + _B + r"f_[A-Za-z0-9]{30,60}" + _E, description="Hugging Face tokens"),
        Detector("groq_api_key", r"g" + _B + r"sk_[A-Za-z0-9]{48,60}" + _E, description="Groq API keys"),
        Detector("xai_api_key", r"x" + _B + r"ai-[A-Za-z0-9]{70,90}" + _E, description="xAI API keys"),
        Detector("replicate_token", r"r" + _B + r"8_[A-Za-z0-9]{37,40}" + _E, description="Replicate API tokens"),
        Detector("npm_token", r"n" + _B + r"pm_[A-Za-z0-9]{36}" + _E, description="npm access tokens"),
        Detector("pypi_token", r"p" + _B + r"ypi-AgE[A-Za-z0-9_\-]{50,300}" + _E, description="PyPI API tokens"),
        Detector(
            "jwt",
            r"e" + _B + r"yJ[A-Za-z0-9_\-]{5,4096}\.eyJ[A-Za-z0-9_\-]{5,8192}\.[A-Za-z0-9_\-]{0,4096}" + _E,
            description="JSON Web Tokens (header.payload.signature, both JSON parts base64url)",
        ),
        Detector(
            "authorization",
            _AUTHORIZATION,
            secret_groups=(1,),
            description="Authorization / Proxy-Authorization header values, whatever the scheme",
        ),
        Detector(
            "bearer_token",
            _BEARER,
            secret_groups=(1,),
            # "basic understanding", "bearer instruments": a credential has a digit or is long.
            validator=lambda v: len(v) >= 20 or any(c.isdigit() for c in v),
            description="Bearer and Basic credentials outside a header line (with a digit, or 20+ characters)",
        ),
        Detector(
            "url_password",
            r"://[^\s:/@?#\"']{0,256}:([^\s@/?#\"']{1,256})@",
            secret_groups=(1,),
            description="Passwords in URLs (redis://:pw@host, postgresql://user:pw@host)",
        ),
        Detector(
            "url_query_secret",
            _URL_QUERY,
            secret_groups=(1,),
            description="Secrets in URL query strings (?key= as the Gemini REST API sends it, signatures, tokens)",
        ),
        Detector(
            "secret_assignment",
            _SECRET_ASSIGNMENT,
            secret_groups=(1, 2, 3),
            validator=lambda v: (
                v.lower() not in ("none", "null", "true", "false", "nil", "****", "") and not v.startswith("[REDACTED")
            ),
            description="Values of keys named like secrets (api_key, password, token, secret, ...) in key=value, "
            "key: value, JSON and Python reprs",
        ),
        Detector(
            "email",
            r"@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
            extend_left=r"A-Za-z0-9._%+\-",
            description="E-mail addresses",
        ),
        Detector(
            "card_number",
            _CARD,
            validator=_card_valid,
            description="Payment card numbers (13-19 digits, issuer prefixes 2221-2720 and 3-6, spaces or dashes "
            "allowed), Luhn-checked",
        ),
        Detector(
            "iban",
            r"[A-Z](?<![A-Za-z0-9].)[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])",
            validator=_iban_candidate,
            description="IBANs, compact or in groups of four, country length and mod-97 checked",
        ),
        Detector(
            "phone_number",
            _PHONE,
            validator=_phone_valid,
            description="Phone numbers: international (+CC ...) and North American (555) 123-4567 / 555-123-4567",
        ),
    )


# Every match of a detector contains one of its anchors (lower-cased). Detectors of digits
# (cards, IBANs, phones) have none: digits are in almost every log line anyway.
_ANCHORS: dict[str, tuple[str, ...]] = {
    "pem_private_key": ("-----begin",),
    "anthropic_api_key": ("sk-ant-",),
    "openai_api_key": ("sk-",),
    "google_api_key": ("aiza",),
    "aws_access_key_id": ("akia", "asia", "abia", "acca"),
    "aws_secret_access_key": ("secret",),
    "github_token": ("gh", "github_pat_"),
    "gitlab_token": ("gl",),
    "slack_token": ("xox", "xapp-"),
    "slack_webhook": ("hooks.slack.com",),
    "stripe_key": ("_live_", "_test_", "whsec_"),
    "twilio_api_key": ("sk",),
    "sendgrid_api_key": ("sg.",),
    "huggingface_token": ("hf_",),
    "groq_api_key": ("gsk_",),
    "xai_api_key": ("xai-",),
    "replicate_token": ("r8_",),
    "npm_token": ("npm_",),
    "pypi_token": ("pypi-",),
    "jwt": ("eyj",),
    "authorization": ("authorization",),
    "bearer_token": ("bearer", "basic"),
    "url_password": ("://",),
    "url_query_secret": ("?", "&"),
    "secret_assignment": ("token", "key", "secret", "pass", "pwd", "credential", "cookie", "session", "auth"),
    "email": ("@",),
}

# Each digit detector's cheapest necessary condition: a card is a run of 13+ digits (spaces or dashes
# between); an IBAN starts with two capitals and two digits; a phone number has "+" and a digit, or
# 3 digits, a dot or dash and 3 digits, or "(" and 3 digits. Timestamps and ids meet none of them.
_GATES = {
    "card_number": r"[0-9][0-9 \-]{11,}[0-9]",
    "iban": r"[A-Z]{2}[0-9]{2}",
    "phone_number": r"[+(0-9](?:(?<=\+)[0-9]|(?<=\()[0-9]{3}\)|(?<=[0-9])[0-9]{2}[.\-][0-9]{3})",
}

# The same conditions, checked with substring searches: re stops at every digit of a log line (its
# timestamps, ids, counts) to try a gate there, which cost more than the rest of a clean line's checks. In
# a text's shape (UTF-8, each digit made "0" and each capital "A", spaces and dashes dropped) a card is a
# run of 13+ "0"s; an IBAN starts "AA00"; a phone number holds "+0", "(000)", "000.000" (a dot between
# its groups, the other one a dot, a dash or none) or ten "0"s (dashes). A text without them has no match.
_SHAPE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)
# A detector's gate passes when one of its substrings is in the shape.
_SHAPE_GATES: dict[str, tuple[str, ...]] = {
    "card_number": ("0000000000000",),
    "iban": ("AA00",),
    "phone_number": ("+0", "(000)", "000.000", "0000000000"),
}


def _shape(text: str) -> str:
    # bytes.translate is a table lookup per byte; str.translate builds its cache on every call (slower on
    # a log line than all the checks together). The searches are on a str: bytes' "in" costs 4x more.
    return text.encode("utf-8", "surrogatepass").translate(_SHAPE, b" -").decode("latin-1")


# Candidate starts of first-party patterns that re finds slowly, keyed by the exact pattern and flags (a
# detector with another pattern, or another detector with this name, is searched by its pattern).
_STARTS: dict[tuple[str, int], _Starts] = {
    (_SECRET_ASSIGNMENT, 0): _secret_assignment_starts,
    (_PHONE, 0): _phone_starts,
}

_DEFAULTS: tuple[Detector, ...] | None = None


def _shape_gate(detector: Detector) -> tuple[str, ...]:
    """The substrings of a text's shape (:func:`_shape`) one of which stands for ``detector``'s gate; none
    for a detector other than a first-party one with its own pattern and gate."""
    if (detector.pattern, detector.gate) != _first_party_gates().get(detector.name):
        return ()
    return _SHAPE_GATES.get(detector.name, ())


_FIRST_PARTY_GATES: dict[str, tuple[str, str]] | None = None


def _first_party_gates() -> dict[str, tuple[str, str]]:
    # Built whole, then published: maskers may be built in several threads at once, and one that saw a
    # half-filled table would run a first-party gate as its regex (right, but slow).
    global _FIRST_PARTY_GATES
    if _FIRST_PARTY_GATES is None:
        _FIRST_PARTY_GATES = {d.name: (d.pattern, d.gate) for d in default_detectors() if d.gate}
    return _FIRST_PARTY_GATES


def _split(detector: Detector) -> tuple[str, ...]:
    """Patterns, each starting with a literal, whose matches together are ``detector``'s; none if unknown."""
    return _SPLITS.get(detector.pattern, ()) if detector.flags == 0 else ()


def _starts_finder(detector: Detector) -> _Starts | None:
    """The function giving, ascending, every position in a text where ``detector``'s pattern can match."""
    return _STARTS.get((detector.pattern, detector.flags))


def default_detectors() -> tuple[Detector, ...]:
    """The first-party detectors, in the order they are tried at one position."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = tuple(
            dataclasses.replace(d, anchors=_ANCHORS.get(d.name, ()), gate=_GATES.get(d.name, "")) for d in _build()
        )
    return _DEFAULTS
