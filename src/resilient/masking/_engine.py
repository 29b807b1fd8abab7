"""The masker: each enabled detector's own compiled pattern, its matches merged left to right in one pass.

The pass gives what this plain rule gives (the reference the tests hold it
to): at each position, left to right, the detectors are tried in order (the
order of :func:`default_detectors`, then plugin detectors, then configured
patterns); the first whose match there is a secret (not empty, and its
validator accepts it) is masked, and the pass goes on at the end of its
match. A candidate that is not a secret masks nothing and hides nothing:
the next detector is tried at the same position, and its own detector one
character on. (Up to 2026-12 a rejected candidate was skipped whole, as one
``finditer`` over the alternation of the detectors does, so an IBAN after
an IBAN-shaped word, or a phone number a failed card candidate began with,
stayed in the text.)

Why the merge is written out here: CPython's ``re`` has no multi-pattern
scanner (no Aho-Corasick), so a pattern of twenty-odd alternatives is tried
alternative by alternative at almost every position (about 10 MB/s on a
log), while one detector alone, starting with a literal, is found by
``re``'s literal scan at 1,000 MB/s and more. Each detector's next match is
kept, and only the one the pass chose or passed over is searched again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from ._detectors import Detector, _alternative, _shape, _shape_gate, _split, _starts_finder

__all__ = ["Masker", "Replacement"]

Replacement = Literal["label", "hmac"]

_Search = Callable[[str, int], "re.Match[str] | None"]
_Starts = Callable[[str], list[int]]
# One detector in a pass: its pattern's search and match, the finder of its candidate starts (or None),
# the detector, its secret groups and, for extend_left, the pattern of the secret's left part.
_Step = tuple[_Search, _Search, "_Starts | None", Detector, tuple[int, ...], "re.Pattern[str] | None"]
#: At most this many sets of active detectors are kept with their steps (a few µs to put one together again).
_MAX_SETS = 512


def _secret_span(
    text: str,
    m: re.Match[str],
    detector: Detector,
    groups: tuple[int, ...],
    left: re.Pattern[str] | None,
    last: int,
) -> tuple[int, int] | None:
    """Where the secret of detector match ``m`` is in ``text``; None when it is not one (its validator
    says no, or an extend_left secret has no left part after ``last``, where the text is still unmasked)."""
    for g in groups:
        start, end = m.span(g)
        if start >= 0:
            break
    else:  # pragma: no cover - a detector whose secret groups all failed to take part
        return None
    if left is not None:
        # The match starts at its anchor ("@"); the secret runs left of it over extend_left characters.
        before = left.search(text, last, start)
        if before is None:
            return None
        start = before.start()
    if detector.validator is not None and not detector.validator(text[start:end]):
        return None
    return start, end


class Masker:
    """Masks every secret the detectors find in a text, in one left-to-right pass.

    ``replacement="label"`` writes ``[REDACTED:<detector>]``;
    ``replacement="hmac"`` writes ``[REDACTED:<detector>:<12 hex>]``, the
    start of HMAC-SHA256(``hmac_key``, secret): the same secret masks to the
    same token (log lines can be correlated) and the secret cannot be
    recovered from it without the key.

    Before the pass, the anchors of the detectors are looked for in the
    lower-cased text; the pass runs the detectors whose anchors are present
    (the set's compiled patterns kept per such set), so text with no anchor
    costs a few substring searches.
    """

    __slots__ = (
        "_always",
        "_anchored",
        "_any_gate",
        "_compiled",
        "_gated",
        "_hmac_key",
        "_own",
        "_shaped",
        "detectors",
        "replacement",
    )

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        replacement: Replacement = "label",
        hmac_key: str | bytes = b"",
    ) -> None:
        names = [d.name for d in detectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"detector names must be unique; repeated: {', '.join(dupes)}")
        if replacement not in ("label", "hmac"):
            raise ValueError(f"replacement must be 'label' or 'hmac', not {replacement!r}")
        key = hmac_key.encode() if isinstance(hmac_key, str) else bytes(hmac_key)
        if replacement == "hmac" and not key:
            raise ValueError("replacement 'hmac' needs an hmac_key")
        self.detectors: tuple[Detector, ...] = tuple(detectors)
        self.replacement: Replacement = replacement
        self._hmac_key = key
        # Bit i stands for detector i. Anchored detectors are tried only when an anchor is present,
        # gated ones only when their gate pattern matches, the others always.
        self._always = 0
        anchored: dict[str, int] = {}
        gated: dict[str, int] = {}
        shaped: list[tuple[str, int]] = []
        for i, d in enumerate(self.detectors):
            if d.anchors:
                for a in d.anchors:
                    anchored[a] = anchored.get(a, 0) | (1 << i)
            elif d.gate:
                needles = _shape_gate(d)
                if needles:
                    # A first-party gate, checked on the text's shape instead (see _detectors._SHAPE_GATES).
                    shaped.extend((needle, 1 << i) for needle in needles)
                else:
                    gated[d.gate] = gated.get(d.gate, 0) | (1 << i)
            else:
                self._always |= 1 << i
        self._shaped: tuple[tuple[str, int], ...] = tuple(shaped)
        # Anchors grouped under their rarest character: a text without it holds none of them, and most
        # log lines lack most of these characters (one search each instead of one per anchor: 5.3 -> 4.1 us
        # per line of the benchmark's log, measured). A one-character anchor is its own group's test.
        guarded: dict[str, list[tuple[str, int]]] = {}
        for anchor, bits in anchored.items():
            guard = max(anchor, key=_rarity)
            guarded.setdefault(guard, [])
            if anchor != guard:
                guarded[guard].append((anchor, bits))
            else:
                guarded[guard].insert(0, ("", bits))
        self._anchored: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = tuple(
            (guard, tuple(items)) for guard, items in guarded.items()
        )
        self._gated: tuple[tuple[Callable[[str], object], int], ...] = tuple(
            (re.compile(g).search, bits) for g, bits in gated.items()
        )
        # Most texts pass no gate: one search for all of them first, then each only if one passed.
        self._any_gate: Callable[[str], object] | None = (
            re.compile("|".join(f"(?:{g})" for g in gated)).search if len(gated) > 1 else None
        )
        # Per set of active detectors (a bit mask), what the pass runs: texts of a long-running process
        # turn on many different sets, so both are bounded (started over when full). Each detector's
        # own steps are compiled once and shared by every set, so a set costs a tuple to put together.
        self._compiled: dict[int, tuple[_Step, ...]] = {}
        self._own: list[tuple[_Step, ...] | None] = [None] * len(self.detectors)

    def _steps(self, mask: int) -> tuple[_Step, ...]:
        """The detectors in ``mask``, in order, each with its own pattern compiled.

        Each pattern is written as it is in the alternation (``(?flags:pattern)``), so it compiles
        and matches as that alternative does.
        """
        steps: list[_Step] = []
        for i, d in enumerate(self.detectors):
            if mask >> i & 1:
                own = self._own[i]
                if own is None:
                    own = self._own[i] = self._detector_steps(d)
                steps.extend(own)
        return tuple(steps)

    @staticmethod
    def _detector_steps(d: Detector) -> tuple[_Step, ...]:
        left = re.compile(f"[{d.extend_left}]{{1,{d.extend_left_max}}}\\Z") if d.extend_left else None
        # A detector split by first character is one step per part: parts never match at the same
        # position, and being next to each other they keep the detector's place in the order.
        steps: list[_Step] = []
        for pattern in _split(d) or (d.pattern,):
            compiled = re.compile(_alternative(pattern, d.flags))
            steps.append((compiled.search, compiled.match, _starts_finder(d), d, d.secret_groups, left))
        return tuple(steps)

    def _active(self, text: str) -> int:
        active = self._always
        if self._anchored:
            # re's IGNORECASE takes long s (U+017F) for s and dotless or dotted I (U+0131, U+0130) for i, which
            # lower() keeps apart: folded first, or "pa\u017f\u017fword=x" would lack the anchor "pass".
            lowered = (text if text.isascii() else text.translate(_FOLD)).lower()
            if len(text) < _LONG:
                for guard, group in self._anchored:
                    if guard in lowered:
                        for anchor, bits in group:
                            if anchor in lowered:  # "" (the guard itself) is in every text
                                active |= bits
            else:
                # In a long text each anchor it lacks costs a scan of all of it: an anchor is not looked
                # for once its detectors are on (on a short one, that test costs more than it saves).
                for guard, group in self._anchored:
                    if guard in lowered:
                        for anchor, bits in group:
                            if bits & ~active and anchor in lowered:
                                active |= bits
        if self._shaped:
            shape = _shape(text)
            for bits in [bits for needle, bits in self._shaped if needle in shape]:
                active |= bits
        if self._any_gate is None or self._any_gate(text) is not None:
            for search, bits in self._gated:
                if search(text) is not None:
                    active |= bits
        return active

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced; text with none comes back unchanged."""
        active = self._active(text)
        if not active:
            return text
        steps = self._compiled.get(active)
        if steps is None:
            if len(self._compiled) >= _MAX_SETS:
                self._compiled.clear()
            steps = self._compiled.setdefault(active, self._steps(active))
        # Each detector's next match at or after the position reached; on clean text all are None.
        heads: list[re.Match[str] | None] = []
        starts: list[list[int] | None] = []
        for search, match, finder, *_ in steps:
            if finder is None:
                heads.append(search(text, 0))
                starts.append(None)
            else:
                found = finder(text)
                heads.append(_next_at(match, text, found, 0) if found else None)
                starts.append(found)
        if not any(heads):
            return text
        out: list[str] = []
        last = pos = 0
        token = self.token
        while True:
            best: re.Match[str] | None = None
            best_start = chosen = 0
            for i, m in enumerate(heads):
                if m is None:
                    continue
                start = m.start()
                if start < pos:
                    # Passed over by an earlier match: this detector's next one from where the pass is.
                    at = starts[i]
                    m = heads[i] = steps[i][0](text, pos) if at is None else _next_at(steps[i][1], text, at, pos)
                    if m is None:
                        continue
                    start = m.start()
                if best is None or start < best_start:
                    best, best_start, chosen = m, start, i
            if best is None:
                break
            end = best.end()
            _, _, _, detector, groups, left = steps[chosen]
            span = None if end == best_start else _secret_span(text, best, detector, groups, left, last)
            if span is None:
                # Not a secret (empty, or its validator said no): this detector looks again one character
                # on, and the others keep their matches at this position. A rejected candidate hides
                # nothing: "AA0000000000 CH36..." is one IBAN-shaped candidate with an IBAN inside it.
                pos = best_start
                at, after, step = starts[chosen], best_start + 1, steps[chosen]
                if after > len(text):  # search() would take the end of the text again
                    heads[chosen] = None
                else:
                    heads[chosen] = step[0](text, after) if at is None else _next_at(step[1], text, at, after)
                continue
            pos = end
            start, end = span
            out.append(text[last:start])
            out.append(token(detector.name, text[start:end]))
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    __call__ = mask

    def token(self, detector: str, secret: str) -> str:
        """What ``secret``, found by ``detector``, is replaced with."""
        if self.replacement == "hmac":
            digest = hmac.new(self._hmac_key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            return f"[REDACTED:{detector}:{digest[:12]}]"
        return f"[REDACTED:{detector}]"

    def one_by_one(self) -> Callable[[str], str]:
        """The same detectors applied as one ``re.sub`` each, in turn (the baseline the benchmark compares)."""
        singles = [Masker([d], replacement=self.replacement, hmac_key=self._hmac_key) for d in self.detectors]

        def mask(text: str) -> str:
            for single in singles:
                text = single.mask(text)
            return text

        return mask

    def without(self, names: Iterable[str]) -> Masker:
        """A masker without the named detectors."""
        drop = set(names)
        kept = [d for d in self.detectors if d.name not in drop]
        return Masker(kept, replacement=self.replacement, hmac_key=self._hmac_key)

    def __repr__(self) -> str:
        # Never the key.
        return f"<Masker {len(self.detectors)} detectors, replacement={self.replacement!r}>"


def _next_at(match: _Search, text: str, starts: list[int], pos: int) -> re.Match[str] | None:
    """The first match at one of ``starts`` (ascending; every start the pattern can match at) from ``pos`` on."""
    for i in range(bisect_left(starts, pos), len(starts)):
        m = match(text, starts[i])
        if m is not None:
            return m
    return None


# Characters IGNORECASE matches to an ASCII letter that lower() does not turn into it (the Kelvin sign it does).
_FOLD = str.maketrans({"\u017f": "s", "\u0131": "i", "\u0130": "i"})

# A text this long (in characters) or longer is scanned for fewer anchors (see Masker._active).
_LONG = 4096

# Characters from the most to the least frequent in English log text, roughly; any other is rarer still.
_FREQUENT = " etaoinsrhld-.:/0123456789=\"',cumfpgwyb_vkxjqz"


def _rarity(c: str) -> int:
    return _FREQUENT.find(c) % (len(_FREQUENT) + 1)
