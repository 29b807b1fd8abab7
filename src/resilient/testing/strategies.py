"""Hypothesis strategies for testing code that uses resilient.

Secrets (for log masking): one strategy per first-party detector, each
producing a realistic value (the right prefix, alphabet and length, valid
Luhn or IBAN checksums) as a :class:`Secret` -- the snippet as it would
appear in a log line, and the part of it that must not survive masking.
:func:`secrets` draws from all of them; :func:`text_with_secret` embeds one
in arbitrary text; :func:`text_without_secrets` is prose-like text that no
detector should touch. Requires ``hypothesis`` (a test dependency).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import reject
from hypothesis import strategies as st

__all__ = [
    "SECRET_STRATEGIES",
    "Secret",
    "anthropic_api_keys",
    "authorization_headers",
    "aws_access_key_ids",
    "aws_secret_access_keys",
    "bearer_tokens",
    "breaker_configs",
    "cache_requests",
    "card_numbers",
    "emails",
    "github_tokens",
    "gitlab_tokens",
    "google_api_keys",
    "groq_api_keys",
    "huggingface_tokens",
    "ibans",
    "jwts",
    "limit_strings",
    "npm_tokens",
    "openai_api_keys",
    "outcome_sequences",
    "outcomes",
    "pem_private_keys",
    "phone_numbers",
    "pypi_tokens",
    "quota_configs",
    "replicate_tokens",
    "retry_configs",
    "secret_assignments",
    "secrets",
    "sendgrid_api_keys",
    "slack_tokens",
    "slack_webhooks",
    "stripe_keys",
    "text_with_secret",
    "text_without_secrets",
    "twilio_api_keys",
    "url_passwords",
    "url_query_secrets",
    "xai_api_keys",
]

_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "_-"
_HEX = "0123456789abcdef"
_B64 = _ALNUM + "+/"


@dataclass(frozen=True)
class Secret:
    """A secret as a log would carry it.

    ``snippet`` is what is written (``password=hunter2x``, a whole URL);
    ``value`` the part that must not appear after masking (``hunter2x``);
    ``detector`` the name of the detector meant to find it.
    """

    detector: str
    snippet: str
    value: str


def _chars(alphabet: str, size: int, max_size: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size if max_size is None else max_size)


def _whole(detector: str, strategy: st.SearchStrategy[str]) -> st.SearchStrategy[Secret]:
    return strategy.map(lambda v: Secret(detector, v, v))


# ---------------------------------------------------------------------------- provider keys


def anthropic_api_keys() -> st.SearchStrategy[Secret]:
    """Anthropic keys: ``sk-ant-api03-`` + 93 URL-safe characters + ``AA`` (and admin keys)."""
    return _whole(
        "anthropic_api_key",
        st.builds(
            lambda kind, body: f"sk-ant-{kind}-{body}AA", st.sampled_from(["api03", "admin01"]), _chars(_URLSAFE, 93)
        ),
    )


def openai_api_keys() -> st.SearchStrategy[Secret]:
    """OpenAI keys: ``sk-proj-``/``sk-svcacct-``/``sk-admin-`` + URL-safe body, or legacy ``sk-`` + 48 alphanumerics."""
    modern = st.builds(
        lambda kind, body: f"sk-{kind}-{body}", st.sampled_from(["proj", "svcacct", "admin"]), _chars(_URLSAFE, 40, 160)
    )
    legacy = _chars(_ALNUM, 48).map(lambda b: f"sk-{b}")
    return _whole("openai_api_key", st.one_of(modern, legacy))


def google_api_keys() -> st.SearchStrategy[Secret]:
    """Google (Gemini) API keys: ``AIza`` + 35 URL-safe characters."""
    return _whole("google_api_key", _chars(_URLSAFE, 35).map(lambda b: "AIza" + b))


def aws_access_key_ids() -> st.SearchStrategy[Secret]:
    """AWS access key ids: ``AKIA``/``ASIA`` + 16 of ``A-Z2-7``."""
    return _whole(
        "aws_access_key_id",
        st.builds(lambda p, b: p + b, st.sampled_from(["AKIA", "ASIA"]), _chars(string.ascii_uppercase + "234567", 16)),
    )


def aws_secret_access_keys() -> st.SearchStrategy[Secret]:
    """``aws_secret_access_key = <40 base64 characters>`` as in a credentials file or environment dump."""
    return st.builds(
        lambda name, sep, v: Secret("aws_secret_access_key", f"{name}{sep}{v}", v),
        st.sampled_from(["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "SecretAccessKey"]),
        st.sampled_from(["=", " = ", ": ", '": "']),
        _chars(_B64, 40),
    )


def github_tokens() -> st.SearchStrategy[Secret]:
    """GitHub tokens: ``ghp_``/``gho_``/``ghs_`` + 36 alphanumerics, or ``github_pat_`` + 82 characters."""
    classic = st.builds(
        lambda p, b: p + b, st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), _chars(_ALNUM, 36)
    )
    fine = _chars(_ALNUM + "_", 82).map(lambda b: "github_pat_" + b)
    return _whole("github_token", st.one_of(classic, fine))


def gitlab_tokens() -> st.SearchStrategy[Secret]:
    """GitLab personal access tokens: ``glpat-`` + 20 URL-safe characters."""
    return _whole("gitlab_token", _chars(_URLSAFE, 20).map(lambda b: "glpat-" + b))


def slack_tokens() -> st.SearchStrategy[Secret]:
    """Slack tokens: ``xoxb-``/``xoxp-`` + numeric ids and a secret part."""
    return _whole(
        "slack_token",
        st.builds(
            lambda kind, a, b, c: f"xox{kind}-{a}-{b}-{c}",
            st.sampled_from("bpa"),
            _chars(string.digits, 10, 13),
            _chars(string.digits, 10, 13),
            _chars(_ALNUM, 24),
        ),
    )


def slack_webhooks() -> st.SearchStrategy[Secret]:
    """Slack incoming-webhook URLs."""
    return _whole(
        "slack_webhook",
        st.builds(
            lambda t, b, s: f"https://hooks.slack.com/services/T{t}/B{b}/{s}",
            _chars(string.ascii_uppercase + string.digits, 8, 10),
            _chars(string.ascii_uppercase + string.digits, 8, 10),
            _chars(_ALNUM, 24),
        ),
    )


def stripe_keys() -> st.SearchStrategy[Secret]:
    """Stripe secret and restricted keys: ``sk_live_``/``rk_test_`` + 24-99 alphanumerics."""
    return _whole(
        "stripe_key",
        st.builds(
            lambda p, m, b: f"{p}_{m}_{b}",
            st.sampled_from(["sk", "rk"]),
            st.sampled_from(["live", "test"]),
            _chars(_ALNUM, 24, 99),
        ),
    )


def twilio_api_keys() -> st.SearchStrategy[Secret]:
    """Twilio API key SIDs: ``SK`` + 32 hex digits."""
    return _whole("twilio_api_key", _chars(_HEX, 32).map(lambda b: "SK" + b))


def sendgrid_api_keys() -> st.SearchStrategy[Secret]:
    """SendGrid keys: ``SG.`` + 22 + ``.`` + 43 URL-safe characters."""
    return _whole("sendgrid_api_key", st.builds(lambda a, b: f"SG.{a}.{b}", _chars(_URLSAFE, 22), _chars(_URLSAFE, 43)))


def huggingface_tokens() -> st.SearchStrategy[Secret]:
    """Hugging Face tokens: ``hf_`` + 34 alphanumerics."""
    return _whole("huggingface_token", _chars(_ALNUM, 34).map(lambda b: "hf_" + b))


def groq_api_keys() -> st.SearchStrategy[Secret]:
    """Groq keys: ``gsk_`` + 52 alphanumerics."""
    return _whole("groq_api_key", _chars(_ALNUM, 52).map(lambda b: "gsk_" + b))


def xai_api_keys() -> st.SearchStrategy[Secret]:
    """xAI keys: ``xai-`` + 80 alphanumerics."""
    return _whole("xai_api_key", _chars(_ALNUM, 80).map(lambda b: "xai-" + b))


def replicate_tokens() -> st.SearchStrategy[Secret]:
    """Replicate tokens: ``r8_`` + 37 alphanumerics."""
    return _whole("replicate_token", _chars(_ALNUM, 37).map(lambda b: "r8_" + b))


def npm_tokens() -> st.SearchStrategy[Secret]:
    """npm tokens: ``npm_`` + 36 alphanumerics."""
    return _whole("npm_token", _chars(_ALNUM, 36).map(lambda b: "npm_" + b))


def pypi_tokens() -> st.SearchStrategy[Secret]:
    """PyPI tokens: ``pypi-AgEIcHlwaS5vcmc`` + a URL-safe macaroon."""
    return _whole("pypi_token", _chars(_URLSAFE, 60, 180).map(lambda b: "pypi-AgEIcHlwaS5vcmc" + b))


# ---------------------------------------------------------------------------- credentials in context


def jwts() -> st.SearchStrategy[Secret]:
    """JSON Web Tokens: base64url header and payload (both JSON objects, so ``eyJ``) and a signature."""
    return _whole(
        "jwt",
        st.builds(
            lambda h, p, s: f"eyJ{h}.eyJ{p}.{s}",
            _chars(_URLSAFE, 10, 40),
            _chars(_URLSAFE, 10, 200),
            _chars(_URLSAFE, 43),
        ),
    )


def authorization_headers() -> st.SearchStrategy[Secret]:
    """``Authorization: Bearer <token>`` (or Basic, or a bare value) as a header line, a dict repr or JSON."""
    return st.builds(
        lambda name, sep, scheme, v: Secret("authorization", f"{name}{sep}{scheme}{v}", v),
        st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]),
        st.sampled_from([": ", "=", "': '", '": "']),
        st.sampled_from(["Bearer ", "Basic ", "token ", ""]),
        _chars(_URLSAFE + ".", 12, 80),
    )


def bearer_tokens() -> st.SearchStrategy[Secret]:
    """``Bearer <token>`` outside a header line (tokens with a digit, as real ones have)."""
    return st.builds(
        lambda scheme, v: Secret("bearer_token", f"{scheme} {v}", v),
        st.sampled_from(["Bearer", "bearer", "Basic"]),
        st.builds(
            lambda a, d, b: a + d + b, _chars(_URLSAFE, 4, 40), st.sampled_from(string.digits), _chars(_URLSAFE, 4, 40)
        ),
    )


def pem_private_keys() -> st.SearchStrategy[Secret]:
    """A PEM private-key block, base64 body in 64-character lines."""

    def block(kind: str, body: str) -> Secret:
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        text = f"-----BEGIN {kind}PRIVATE KEY-----\n{lines}\n-----END {kind}PRIVATE KEY-----"
        return Secret("pem_private_key", text, lines.split("\n")[0])

    return st.builds(block, st.sampled_from(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]), _chars(_B64, 64, 400))


def _unlike_its_token(secret: Secret) -> bool:
    """Whether the value is not in its own replacement (``password`` is in ``[REDACTED:url_password]``):
    masked text would still hold it, and ``secret.value not in mask(text)`` could not hold."""
    return secret.value not in f"[REDACTED:{secret.detector}]"


def url_passwords() -> st.SearchStrategy[Secret]:
    """Connection URLs with a password: ``redis://:pw@host``, ``postgresql://user:pw@host/db``."""
    return st.builds(
        lambda scheme, user, pw, host: Secret("url_password", f"{scheme}://{user}:{pw}@{host}:5432/app", pw),
        st.sampled_from(["redis", "rediss", "postgresql", "mysql", "amqp", "https", "mongodb+srv"]),
        st.one_of(st.just(""), _chars(string.ascii_lowercase, 3, 12)),
        _chars(_ALNUM + "!$*~", 8, 32),
        st.sampled_from(["db.internal", "10.0.0.5", "cache.example.com"]),
    ).filter(_unlike_its_token)


def url_query_secrets() -> st.SearchStrategy[Secret]:
    """Request URLs with a key in the query string, as the Gemini REST API sends it (``?key=``)."""
    return st.builds(
        lambda name, v, more: Secret(
            "url_query_secret",
            f"https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?{name}={v}{more}",
            v,
        ),
        st.sampled_from(["key", "api_key", "access_token", "token", "signature"]),
        _chars(_URLSAFE, 12, 60),
        st.sampled_from(["", "&alt=sse", "#frag"]),
    )


def secret_assignments() -> st.SearchStrategy[Secret]:
    """``password=...``, ``"api_key": "..."``, ``{'client_secret': '...'}``: values by key name."""
    names = ["password", "api_key", "token", "secret", "client_secret", "DB_PASSWORD", "X-Api-Key", "access_token"]

    def build(name: str, style: int, value: str) -> Secret:
        snippet = (f"{name}={value}", f'"{name}": "{value}"', f"'{name}': '{value}'", f"{name}: {value}")[style]
        return Secret("secret_assignment", snippet, value)

    values = _chars(_ALNUM + "!$*~", 8, 40)
    return st.builds(build, st.sampled_from(names), st.integers(0, 3), values).filter(_unlike_its_token)


# ---------------------------------------------------------------------------- personal data


def emails() -> st.SearchStrategy[Secret]:
    """E-mail addresses with dotted and plus-tagged local parts."""
    label = _chars(string.ascii_lowercase + string.digits, 1, 12)
    return _whole(
        "email",
        st.builds(
            lambda local, tag, domain, tld: f"{local}{tag}@{domain}.{tld}",
            label,
            st.sampled_from(["", ".x", "+tag", "_1"]),
            label,
            st.sampled_from(["com", "io", "co.uk", "de", "example"]),
        ),
    )


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 0:  # these are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return digits + str((10 - total % 10) % 10)


def card_numbers() -> st.SearchStrategy[Secret]:
    """Luhn-valid card numbers of the main networks, compact or grouped by spaces or dashes."""

    def build(prefix: str, length: int, body: str, sep: str) -> Secret:
        number = _luhn_complete((prefix + body)[: length - 1])
        grouped = sep.join(number[i : i + 4] for i in range(0, len(number), 4)) if sep != "none" else number
        return Secret("card_number", grouped, grouped)

    networks = [("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15)]
    networks += [("37", 15), ("6011", 16), ("65", 19)]
    return st.sampled_from(networks).flatmap(
        lambda n: st.builds(
            build, st.just(n[0]), st.just(n[1]), _chars(string.digits, 18), st.sampled_from(["none", " ", "-"])
        )
    )


_IBAN_FORMATS = {
    "DE": "8n10n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "NL": "4a10n",
    "ES": "20n",
    "IT": "1a10n12c",
    "CH": "5n12c",
}


def ibans() -> st.SearchStrategy[Secret]:
    """IBANs with valid mod-97 check digits for several countries, compact or in groups of four."""

    def bban(fmt: str) -> st.SearchStrategy[str]:
        parts = []
        number = ""
        for c in fmt:
            if c.isdigit():
                number += c
                continue
            alphabet = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}[c]
            parts.append(_chars(alphabet, int(number)))
            number = ""
        return st.tuples(*parts).map("".join)

    def build(country: str, body: str, grouped: bool) -> Secret:
        numeric = int("".join(str(int(c, 36)) for c in body + country + "00"))
        iban = f"{country}{98 - numeric % 97:02d}{body}"
        text = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if grouped else iban
        return Secret("iban", text, text)

    return st.sampled_from(sorted(_IBAN_FORMATS)).flatmap(
        lambda c: st.builds(build, st.just(c), bban(_IBAN_FORMATS[c]), st.booleans())
    )


def phone_numbers() -> st.SearchStrategy[Secret]:
    """International (+CC ...) and North American phone numbers."""
    digits = string.digits
    intl = st.builds(
        lambda cc, a, b, c: f"+{cc} {a} {b} {c}",
        st.sampled_from(["1", "44", "49", "33", "353", "81"]),
        _chars(digits, 2, 3),
        _chars(digits, 3, 4),
        _chars(digits, 4),
    )
    nanp = st.builds(
        lambda a, b, c, style: (f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}")[style],
        _chars(digits, 3),
        _chars(digits, 3),
        _chars(digits, 4),
        st.integers(0, 2),
    )
    return _whole("phone_number", st.one_of(intl, nanp))


#: Detector name -> strategy of its secrets, for every first-party detector.
SECRET_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Secret]]] = {
    "pem_private_key": pem_private_keys,
    "anthropic_api_key": anthropic_api_keys,
    "openai_api_key": openai_api_keys,
    "google_api_key": google_api_keys,
    "aws_access_key_id": aws_access_key_ids,
    "aws_secret_access_key": aws_secret_access_keys,
    "github_token": github_tokens,
    "gitlab_token": gitlab_tokens,
    "slack_token": slack_tokens,
    "slack_webhook": slack_webhooks,
    "stripe_key": stripe_keys,
    "twilio_api_key": twilio_api_keys,
    "sendgrid_api_key": sendgrid_api_keys,
    "huggingface_token": huggingface_tokens,
    "groq_api_key": groq_api_keys,
    "xai_api_key": xai_api_keys,
    "replicate_token": replicate_tokens,
    "npm_token": npm_tokens,
    "pypi_token": pypi_tokens,
    "jwt": jwts,
    "authorization": authorization_headers,
    "bearer_token": bearer_tokens,
    "url_password": url_passwords,
    "url_query_secret": url_query_secrets,
    "secret_assignment": secret_assignments,
    "email": emails,
    "card_number": card_numbers,
    "iban": ibans,
    "phone_number": phone_numbers,
}


def secrets() -> st.SearchStrategy[Secret]:
    """A secret of any first-party detector."""
    return st.one_of([make() for make in SECRET_STRATEGIES.values()])


# Characters that end a token for every detector: what separates a secret from its neighbours in a log.
_SEPARATORS = st.sampled_from([" ", "\n", "\t", ", ", "; ", " (", ") ", " [", "] ", ' "', '" ', " '", "' ", " | "])


def _only_at(text: str, value: str, at: int) -> bool:
    """Whether ``value`` occurs in ``text`` at ``at`` and nowhere else (overlapping occurrences count)."""
    return text.find(value) == at and text.find(value, at + 1) == -1


def _value_once(secret: Secret) -> bool:
    return secret.value in secret.snippet and _only_at(secret.snippet, secret.value, secret.snippet.find(secret.value))


@st.composite
def text_with_secret(
    draw: st.DrawFn, secret: st.SearchStrategy[Secret] | None = None, text: st.SearchStrategy[str] | None = None
) -> tuple[str, Secret]:
    """``(text, secret)``: arbitrary text (``st.text()`` by default) with the secret embedded somewhere in it.

    The secret sits between separators (a space, a newline, a bracket, a
    quote...), as in a log line; glued to letters on both sides it would be
    a different token. ``secret.value`` occurs in the text exactly once,
    where the secret was put, so ``secret.value not in mask(text)`` is the
    whole property: secrets whose snippet repeats the value (a URL whose
    user is its password) are not drawn, and filler that repeats it
    (Hypothesis likes to draw the same string twice) is left out.
    """
    chosen = draw((secret if secret is not None else secrets()).filter(_value_once))
    filler = text if text is not None else st.text(max_size=200)
    before, after, left = draw(filler), draw(filler), draw(_SEPARATORS)
    middle = left + chosen.snippet + draw(_SEPARATORS)
    at = len(left) + chosen.snippet.index(chosen.value)
    # Filler that repeats the value loses the side(s) that do; the text stays as drawn in every other case.
    sides = ((before, after), ("", after), (before, ""), ("", ""))
    found = next((b + middle + a for b, a in sides if _only_at(b + middle + a, chosen.value, len(b) + at)), None)
    if found is None:  # the separators themselves make a second occurrence: vanishingly rare
        reject()
    return found, chosen


@st.composite
def text_without_secrets(draw: st.DrawFn) -> str:
    """Prose-like log text no detector matches: short words in any script, numbers with units, punctuation.

    What the false-positive policy promises to leave alone (``docs/masking.md``):
    words of at most 12 letters, numbers of at most 5 digits each followed by
    a unit or a comma, and punctuation other than the characters secrets are
    built around (``@ : = / + _``).
    """
    word = st.text(alphabet=st.characters(categories=("Ll", "Lu", "Lo")), min_size=1, max_size=12)
    number = st.builds(
        lambda n, unit: f"{n}{unit}", st.integers(0, 99_999), st.sampled_from(["ms", "s", " tokens", "%", ",", "x"])
    )
    punct = st.sampled_from([".", ",", ";", "!", "?", "(", ")", "-", "'", '"'])
    tokens = draw(st.lists(st.one_of(word, word, number, punct), max_size=40))
    return " ".join(tokens)


# ============================================================================ outcomes, limits, configurations
# (the testing toolkit's strategies: provider outcomes, limit strings, valid
# configuration sections and cache-key requests)

_OUTCOME_STATUSES = (400, 401, 404, 408, 409, 422, 429, 500, 502, 503, 504, 529)


@st.composite
def outcomes(draw: st.DrawFn, *, latency: bool = True, chunks: bool = False) -> object:
    """One provider outcome for :class:`~resilient.testing.ScriptedProvider`.

    A value (``"ok"``), an HTTP status (:class:`HTTPStatus`, 429 and 503 with
    or without ``retry-after``), a timeout or connection error, optionally
    behind a :class:`Latency`, and with ``chunks=True`` stream chunks
    (:class:`Chunks`, possibly ending in an error).
    """
    from ._scripted import Chunks, HTTPStatus, Latency

    kind = draw(st.sampled_from(["value", "status", "timeout", "connection", *(["chunks"] if chunks else [])]))
    outcome: object
    if kind == "value":
        outcome = draw(st.sampled_from(["ok", "answer", ""]))
    elif kind == "status":
        code = draw(st.sampled_from(_OUTCOME_STATUSES))
        headers = draw(st.sampled_from([{}, {"retry-after": "1"}, {"retry-after-ms": "250"}]))
        outcome = HTTPStatus(code, headers)
    elif kind == "timeout":
        outcome = TimeoutError("provider timed out")
    elif kind == "connection":
        outcome = ConnectionResetError("connection reset")
    else:
        items = draw(st.lists(st.text(max_size=8), max_size=5))
        error = draw(st.sampled_from([None, ConnectionResetError("reset mid-stream")]))
        outcome = Chunks(items, error)
    if latency and draw(st.booleans()):
        return Latency(draw(st.floats(0, 30, allow_nan=False)), outcome)
    return outcome


@st.composite
def outcome_sequences(
    draw: st.DrawFn, *, min_size: int = 0, max_size: int = 20, latency: bool = True, chunks: bool = False
) -> list[object]:
    """A script for :class:`~resilient.testing.ScriptedProvider`: a list of :func:`outcomes`."""
    return draw(st.lists(outcomes(latency=latency, chunks=chunks), min_size=min_size, max_size=max_size))


_GRANULARITIES = ("second", "minute", "hour", "day")


@st.composite
def limit_strings(draw: st.DrawFn, *, max_amount: int = 1000, max_items: int = 3) -> str:
    """A valid ``limits`` string as the quota takes it: ``"5/minute"``, ``"2 per 10 seconds;100/day"``."""
    parts = []
    for _ in range(draw(st.integers(1, max_items))):
        amount = draw(st.integers(1, max_amount))
        unit = draw(st.sampled_from(_GRANULARITIES))
        multiple = draw(st.sampled_from([1, 1, 2, 10]))
        parts.append(f"{amount}/{unit}" if multiple == 1 else f"{amount} per {multiple} {unit}s")
    return ";".join(parts)


@st.composite
def quota_configs(draw: st.DrawFn, *, max_amount: int = 20) -> dict[str, object]:
    """A valid ``config=`` for :class:`~resilient.Pipeline` with a ``quota`` section (request limits, maybe tokens)."""
    strategy = draw(st.sampled_from(["moving-window", "fixed-window", "sliding-window-counter"]))
    quota: dict[str, object] = {
        "requests": draw(limit_strings(max_amount=max_amount, max_items=2)),
        "strategy": strategy,
        "provider_signals": draw(st.booleans()),
    }
    if draw(st.booleans()):
        quota["output_tokens"] = f"{draw(st.integers(100, 100_000))}/minute"
    if draw(st.booleans()):
        quota["tenants"] = {"small": {"requests": draw(limit_strings(max_amount=max_amount, max_items=1))}}
    return {"store": "memory://", "quota": quota}


@st.composite
def breaker_configs(draw: st.DrawFn) -> dict[str, object]:
    """A valid ``config=`` with a ``breaker`` section on a count window (``minimum_calls <= window_size``)."""
    size = draw(st.integers(1, 20))
    return {
        "store": "memory://",
        "breaker": {
            "window_size": size,
            "minimum_calls": draw(st.integers(1, size)),
            "failure_rate": draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0])),
            "wait_open": draw(st.sampled_from([0.5, 1.0, 5.0, 30.0])),
            "half_open_calls": draw(st.integers(1, 5)),
        },
    }


@st.composite
def retry_configs(draw: st.DrawFn) -> dict[str, object]:
    """A valid ``config=`` with a ``retry`` section (``max_delay >= base_delay``, maybe a deadline)."""
    base = draw(st.floats(0, 5, allow_nan=False))
    retry: dict[str, object] = {
        "max_attempts": draw(st.integers(1, 8)),
        "base_delay": base,
        "max_delay": base + draw(st.floats(0, 30, allow_nan=False)),
        "respect_retry_after": draw(st.booleans()),
        "max_retry_after": draw(st.floats(0, 120, allow_nan=False)),
        "budget_ratio": None,
    }
    if draw(st.booleans()):
        retry["deadline"] = draw(st.floats(0.1, 120, allow_nan=False))
    return {"store": "memory://", "retry": retry}


@st.composite
def cache_requests(draw: st.DrawFn, *, shape: str | None = None) -> dict[str, object]:
    """Keyword arguments of an Anthropic ``messages.create`` or OpenAI ``chat.completions.create`` call.

    Returns ``{"provider", "operation", "tenant", "kwargs"}``: ``kwargs`` has
    ``model``, ``messages`` (text or content blocks), ``temperature``, maybe
    ``max_tokens``/``system``/``metadata``; ``tenant`` is ``None`` or a name. For
    cache-key properties (equal requests, equal keys; any change, a new key).
    """
    provider = shape or draw(st.sampled_from(["anthropic", "openai"]))
    text = st.text(max_size=60)
    roles = st.sampled_from(["user", "assistant"])
    if provider == "anthropic":
        block = st.builds(lambda t: {"type": "text", "text": t}, text)
        content = st.one_of(text, st.lists(block, min_size=1, max_size=3))
        messages = draw(st.lists(st.fixed_dictionaries({"role": roles, "content": content}), min_size=1, max_size=4))
        kwargs: dict[str, object] = {
            "model": draw(st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"])),
            "max_tokens": draw(st.integers(1, 4096)),
            "messages": messages,
        }
        if draw(st.booleans()):
            kwargs["system"] = draw(text)
        operation = "messages.create"
    else:
        roles = st.sampled_from(["system", "user", "assistant"])
        messages = draw(st.lists(st.fixed_dictionaries({"role": roles, "content": text}), min_size=1, max_size=4))
        kwargs = {"model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini", "o3-mini"])), "messages": messages}
        if draw(st.booleans()):
            kwargs["max_completion_tokens"] = draw(st.integers(1, 4096))
        operation = "chat.completions.create"
    kwargs["temperature"] = draw(st.sampled_from([0, 0.0, 0.2, 0.7, 1.0]))
    if draw(st.booleans()):
        kwargs["metadata" if provider == "anthropic" else "user"] = (
            {"user_id": draw(st.text(min_size=1, max_size=10))} if provider == "anthropic" else draw(text)
        )
    tenant = draw(st.one_of(st.none(), st.sampled_from(["acme", "globex", "initech"])))
    return {"provider": provider, "operation": operation, "tenant": tenant, "kwargs": kwargs}
