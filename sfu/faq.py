"""FAQ auto-answer: match bullet comments (Chinese and English) against a room's FAQ set.

Sans-I/O like the rest of the control plane: ``FaqResponder.on_comment(text, now)`` decides
whether to answer and with which entry; the caller sends the answer into the room (attributed
to the assistant). Matchers are pluggable: ``register_matcher`` or the ``sfu.faq_matchers``
entry-point group. See docs/faq.md.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from rapidfuzz import fuzz, process

from sfu.errors import BadRequest, Conflict, InternalError, LimitExceeded, SfuError

log = logging.getLogger(__name__)

MAX_ENTRIES = 500
MAX_PATTERNS = 20
MAX_PATTERN_CHARS = 200
MAX_ANSWER_CHARS = 500
MAX_ID_CHARS = 64
MIN_NORMALIZED_CHARS = 2  # shorter comments never match; shorter patterns are refused
MAX_INPUT_CHARS = 2000  # raw comment text looked at (bounds normalisation work)
MAX_COMMENT_CHARS = 300  # normalised comment text scored (bounds rapidfuzz work)
MIN_THRESHOLD, MAX_THRESHOLD = 50.0, 100.0
ENTRY_POINT_GROUP = "sfu.faq_matchers"

# ---------------------------------------------------------------------------------------------
# Normalisation

# A small hand-picked table of traditional characters common in shopping questions, not a full
# traditional → simplified conversion (that needs a dictionary, e.g. OpenCC, and phrase context).
_TRAD_TO_SIMP = str.maketrans({
    "運": "运", "費": "费", "錢": "钱", "貨": "货", "號": "号", "碼": "码", "問": "问",
    "會": "会", "發": "发", "時": "时", "間": "间", "優": "优", "買": "买", "賣": "卖",
    "價": "价", "顏": "颜", "幾": "几", "麼": "么", "麽": "么", "嗎": "吗", "這": "这",
    "個": "个", "郵": "邮", "還": "还", "沒": "没", "現": "现", "換": "换", "質": "质",
    "們": "们", "給": "给", "雙": "双", "長": "长", "寬": "宽", "適": "适", "體": "体",
    "樣": "样", "種": "种", "說": "说", "請": "请", "謝": "谢", "幫": "帮", "裡": "里",
    "裏": "里", "過": "过", "鏈": "链", "單": "单", "庫": "库", "紅": "红", "藍": "蓝",
    "綠": "绿", "數": "数", "與": "与", "車": "车", "門": "门", "開": "开",
    "實": "实", "際": "际", "圖": "图", "尋": "寻", "專": "专", "贈": "赠", "禮": "礼",
})
# Vanish rather than split words: apostrophes (so "what's" and "whats" normalise alike) and the
# marks that only decorate the character before them (emoji variation selectors, keycap).
_VANISH = frozenset("'’‘`´\ufe0e\ufe0f\u20e3")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_RE = re.compile(f"[{_CJK}]")
# Chinese and Japanese do not separate words with spaces: "包 邮" is "包邮".
_CJK_GAP_RE = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def normalize(text: str) -> str:
    """Canonical form used for matching.

    NFKC (full-width → half-width), casefold, the small traditional → simplified table above,
    punctuation (Chinese and ASCII), symbols, emoji and control characters become spaces,
    apostrophes and emoji variation selectors vanish, whitespace collapses to single spaces
    and spaces between two CJK characters are dropped. Letters (CJK included), digits and
    other marks are kept. Only the first ``MAX_INPUT_CHARS`` characters of ``text`` are looked at.
    """
    text = unicodedata.normalize("NFKC", text[:MAX_INPUT_CHARS]).casefold()
    text = text.translate(_TRAD_TO_SIMP)
    out: list[str] = []
    for ch in text:
        if ch in _VANISH:
            continue
        cat = unicodedata.category(ch)[0]
        if cat in "LNM":  # marks carry meaning in many scripts
            out.append(ch)
        else:  # P*, S* (emoji are So/Sk), Z*, C* (ZWJ, tags, controls, private use)
            out.append(" ")
    return _CJK_GAP_RE.sub("", " ".join("".join(out).split()))


def _is_cjk_heavy(chars: str) -> bool:
    # A CJK character carries about a word's worth of meaning: a third is enough to treat the
    # text as Chinese and score it character by character.
    return len(_CJK_RE.findall(chars)) * 3 >= len(chars)


# ---------------------------------------------------------------------------------------------
# FAQ sets (control input)


@dataclass(frozen=True, slots=True)
class FaqEntry:
    id: str
    patterns: list[str]
    answer: str


def _good_string(value: object, max_chars: int) -> str | None:
    """``value`` if it is a non-blank string of at most ``max_chars`` characters, else None."""
    if isinstance(value, str) and value.strip() and len(value) <= max_chars:
        return value
    return None


class FaqSet:
    """A validated FAQ set: ``from_params`` checks control input, typed errors name the field."""

    def __init__(self, entries: Iterable[FaqEntry]) -> None:
        self.entries: tuple[FaqEntry, ...] = tuple(entries)
        self._by_id = {e.id: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FaqEntry]:
        return iter(self.entries)

    def get(self, entry_id: str) -> FaqEntry | None:
        return self._by_id.get(entry_id)

    @classmethod
    def from_params(cls, raw: object) -> FaqSet:
        """``raw``: a list of ``{id?, patterns: [str], answer: str}`` maps (the control body)."""
        if not isinstance(raw, list):
            raise BadRequest("faq must be a list of {id?, patterns, answer} maps")
        if len(raw) > MAX_ENTRIES:
            raise LimitExceeded(f"faq has {len(raw)} entries; at most {MAX_ENTRIES} are allowed")
        entries: list[FaqEntry] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            entry = _entry_from_params(item, i)
            if entry.id in seen:
                raise BadRequest(f"faq[{i}].id {entry.id!r} duplicates faq[{seen[entry.id]}].id")
            seen[entry.id] = i
            entries.append(entry)
        return cls(entries)


def _entry_from_params(item: object, i: int) -> FaqEntry:
    where = f"faq[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be a map with patterns and answer")
    unknown = [repr(k) for k in item if k not in ("id", "patterns", "answer")]
    if unknown:
        raise BadRequest(f"{where} has unknown field(s) {', '.join(unknown)}")
    entry_id = _good_string(item.get("id", f"faq-{i}"), MAX_ID_CHARS)
    if entry_id is None:
        raise BadRequest(f"{where}.id must be a non-empty string of at most {MAX_ID_CHARS} "
                         "characters")
    patterns = item.get("patterns")
    if not isinstance(patterns, list) or not patterns:
        raise BadRequest(f"{where}.patterns must be a list of 1 to {MAX_PATTERNS} strings")
    if len(patterns) > MAX_PATTERNS:
        raise LimitExceeded(f"{where}.patterns has {len(patterns)} patterns; at most "
                            f"{MAX_PATTERNS} are allowed")
    for j, pattern in enumerate(patterns):
        if _good_string(pattern, MAX_PATTERN_CHARS) is None:
            raise BadRequest(f"{where}.patterns[{j}] must be a non-empty string of at most "
                             f"{MAX_PATTERN_CHARS} characters")
        if len(normalize(pattern).replace(" ", "")) < MIN_NORMALIZED_CHARS:
            # It would contain-match nearly every comment (or none): refuse it loudly.
            raise BadRequest(f"{where}.patterns[{j}] {pattern!r} has fewer than "
                             f"{MIN_NORMALIZED_CHARS} letters or digits after normalisation")
    answer = _good_string(item.get("answer"), MAX_ANSWER_CHARS)
    if answer is None:
        raise BadRequest(f"{where}.answer must be a non-empty string of at most "
                         f"{MAX_ANSWER_CHARS} characters")
    return FaqEntry(id=entry_id, patterns=list(patterns), answer=answer)


# ---------------------------------------------------------------------------------------------
# Matchers


@dataclass(frozen=True, slots=True)
class Match:
    entry: FaqEntry
    score: float  # 0..100
    pattern: str = ""  # the (normalised) pattern that matched, for logs and stats

    @property
    def entry_id(self) -> str:
        return self.entry.id


@runtime_checkable
class Matcher(Protocol):
    def match(self, text: str) -> Match | None: ...


@dataclass(frozen=True, slots=True)
class _Pattern:
    norm: str  # normalised, single spaces
    chars: str  # norm without spaces (character-level scoring and CJK containment)
    tokens: int
    cjk: bool  # contains CJK: contained anywhere; otherwise only on word boundaries
    entry: FaqEntry


class FuzzyMatcher:
    """Built-in matcher: containment, then rapidfuzz over normalised text.

    A normalised pattern contained in the comment scores 100 (the longest one wins, being the
    most specific). Otherwise CJK-heavy comments are scored per character: ``partial_ratio``
    against patterns no longer than the comment (the pattern, approximately, inside it) and
    plain ``ratio`` against longer ones, so a short comment like "好的" does not match every
    pattern containing it. Latin comments are scored per token the same way: ``token_set_ratio``
    against patterns with fewer words, ``token_sort_ratio`` otherwise (so "free" alone or
    "is it free" does not match "is shipping free"). The best score >= threshold wins.
    """

    def __init__(self, entries: Iterable[FaqEntry], threshold: float = 80) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
                MIN_THRESHOLD <= threshold <= MAX_THRESHOLD):
            raise BadRequest(f"threshold must be a number from {MIN_THRESHOLD:g} to "
                             f"{MAX_THRESHOLD:g}")
        self.threshold = float(threshold)
        compiled: dict[str, _Pattern] = {}
        for entry in entries:
            for raw in entry.patterns:
                norm = normalize(raw)
                chars = norm.replace(" ", "")
                if len(chars) >= MIN_NORMALIZED_CHARS and norm not in compiled:
                    compiled[norm] = _Pattern(norm, chars, norm.count(" ") + 1,
                                              bool(_CJK_RE.search(chars)), entry)
        pats = list(compiled.values())
        # Longest first: the first contained pattern is the most specific one.
        self._contain = sorted(pats, key=lambda p: -len(p.chars))
        self._by_len = sorted(pats, key=lambda p: len(p.chars))
        self._len_keys = [len(p.chars) for p in self._by_len]
        self._len_strs = [p.chars for p in self._by_len]
        self._by_tok = sorted(pats, key=lambda p: p.tokens)
        self._tok_keys = [p.tokens for p in self._by_tok]
        self._tok_strs = [p.norm for p in self._by_tok]

    def match(self, text: str) -> Match | None:
        norm = normalize(text)[:MAX_COMMENT_CHARS]
        chars = norm.replace(" ", "")
        if len(chars) < MIN_NORMALIZED_CHARS:
            return None
        padded = f" {norm} "
        for p in self._contain:
            if (p.chars in chars) if p.cjk else (f" {p.norm} " in padded):
                return Match(p.entry, 100.0, p.norm)
        if _is_cjk_heavy(chars):
            split = bisect_right(self._len_keys, len(chars))
            return self._best(chars, self._by_len, self._len_strs, split,
                              fuzz.partial_ratio, fuzz.ratio)
        split = bisect_left(self._tok_keys, norm.count(" ") + 1)
        return self._best(norm, self._by_tok, self._tok_strs, split,
                          fuzz.token_set_ratio, fuzz.token_sort_ratio)

    def _best(self, query: str, pats: list[_Pattern], strs: list[str], split: int,
              scorer_below: Callable[..., float],
              scorer_above: Callable[..., float]) -> Match | None:
        """Best of ``scorer_below`` over ``strs[:split]`` and ``scorer_above`` over the rest."""
        best: Match | None = None
        for scorer, lo, hi in ((scorer_below, 0, split), (scorer_above, split, len(strs))):
            if lo >= hi:
                continue
            cutoff = self.threshold if best is None else max(self.threshold, best.score)
            found = process.extractOne(query, strs[lo:hi], scorer=scorer, processor=None,
                                       score_cutoff=cutoff)
            if found is not None and (best is None or found[1] > best.score):
                p = pats[lo + found[2]]
                best = Match(p.entry, float(found[1]), p.norm)
        return best


# ---------------------------------------------------------------------------------------------
# Plugin registry

MatcherFactory = Callable[[Sequence[FaqEntry], Mapping[str, Any]], Matcher]


def _fuzzy_factory(entries: Sequence[FaqEntry], options: Mapping[str, Any]) -> Matcher:
    unknown = [repr(k) for k in options if k != "threshold"]
    if unknown:
        raise BadRequest(f"unknown fuzzy matcher option(s) {', '.join(unknown)}; known: "
                         "'threshold'")
    return FuzzyMatcher(entries, options.get("threshold", 80))


_FACTORIES: dict[str, MatcherFactory] = {"fuzzy": _fuzzy_factory}


def register_matcher(name: str, factory: MatcherFactory, *, replace: bool = False) -> None:
    """Register ``factory(entries, options) -> Matcher`` under ``name``.

    Registering the same factory twice is a no-op; another factory under a taken name raises
    Conflict unless ``replace`` is true.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest("matcher name must be a non-empty string")
    if not callable(factory):
        raise BadRequest(f"matcher factory for {name!r} must be callable")
    current = _FACTORIES.get(name)
    if current is not None and current is not factory and not replace:
        raise Conflict(f"FAQ matcher {name!r} is already registered")
    _FACTORIES[name] = factory


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_matchers() -> list[str]:
    """Registered names plus those advertised in the ``sfu.faq_matchers`` entry-point group."""
    return sorted(set(_FACTORIES) | set(_entry_points()))


def _factory(name: str) -> MatcherFactory | None:
    factory = _FACTORIES.get(name)
    if factory is not None:
        return factory
    ep = _entry_points().get(name)  # looked up lazily: only when a name is not registered
    if ep is None:
        return None
    try:
        loaded = ep.load()
    except Exception as exc:
        raise InternalError(f"FAQ matcher plugin {name!r} ({ep.value}) failed to load: "
                            f"{exc}") from exc
    if not callable(loaded):
        raise InternalError(f"FAQ matcher plugin {name!r} ({ep.value}) is not callable")
    _FACTORIES[name] = loaded
    return loaded


def make_matcher(name: str, entries: Iterable[FaqEntry],
                 options: Mapping[str, Any] | None = None) -> Matcher:
    """Build the matcher ``name`` for ``entries``; BadRequest lists the known names."""
    if not isinstance(name, str):
        raise BadRequest("matcher must be a string")
    if options is not None and not isinstance(options, Mapping):
        raise BadRequest("matcher options must be a map")
    factory = _factory(name)
    if factory is None:
        raise BadRequest(f"unknown FAQ matcher {name!r}; known: {', '.join(known_matchers())}")
    try:
        matcher = factory(tuple(entries), dict(options or {}))
    except SfuError:
        raise
    except Exception as exc:
        raise InternalError(f"FAQ matcher {name!r} failed to build: {exc}") from exc
    if not isinstance(matcher, Matcher):
        raise InternalError(f"FAQ matcher {name!r} returned {type(matcher).__name__}, "
                            "which has no match(text) method")
    return matcher


# ---------------------------------------------------------------------------------------------
# Per-room responder


class FaqResponder:
    """Decides which comments to answer in one room, with rate limits.

    The same entry is answered at most once per ``per_question_interval_s``; the room gets at
    most ``max_answers_per_s`` answers in any one-second window. ``now`` is in seconds
    (monotonic, injected). A matcher that raises is counted in ``errors``, never propagated:
    comment text is network input.
    """

    def __init__(self, matcher: Matcher, per_question_interval_s: float = 10.0,
                 max_answers_per_s: int = 5) -> None:
        if isinstance(per_question_interval_s, bool) or not isinstance(
                per_question_interval_s, int | float) or not 0 <= per_question_interval_s <= 3600:
            raise BadRequest("per_question_interval_s must be a number from 0 to 3600")
        if isinstance(max_answers_per_s, bool) or not isinstance(max_answers_per_s, int) or not (
                1 <= max_answers_per_s <= 1000):
            raise BadRequest("max_answers_per_s must be an integer from 1 to 1000")
        self.matcher = matcher
        self.per_question_interval_s = float(per_question_interval_s)
        self.max_answers_per_s = max_answers_per_s
        self._last_answer: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._counters = {"comments": 0, "matched": 0, "answered": 0, "rate_limited": 0,
                          "errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def on_comment(self, text: str, now: float) -> FaqEntry | None:
        """The entry to answer ``text`` with, or None (no match, or rate-limited)."""
        found = self.on_comment_match(text, now)
        return None if found is None else found.entry

    def on_comment_match(self, text: str, now: float) -> Match | None:
        """Like ``on_comment`` but returns the Match (entry and score)."""
        c = self._counters
        c["comments"] += 1
        if not isinstance(text, str):
            return None
        try:
            found = self.matcher.match(text)
            if found is not None and not isinstance(found, Match):
                raise TypeError(f"match() returned {type(found).__name__}, not Match")
        except Exception:
            c["errors"] += 1
            if c["errors"] & (c["errors"] - 1) == 0:  # log the 1st, 2nd, 4th, 8th, ... failure
                log.warning("FAQ matcher failed (%d so far)", c["errors"], exc_info=True)
            return None
        if found is None:
            return None
        c["matched"] += 1
        entry_id = found.entry.id
        last = self._last_answer.get(entry_id)
        recent = self._recent
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if (last is not None and now - last < self.per_question_interval_s) or (
                len(recent) >= self.max_answers_per_s):
            c["rate_limited"] += 1
            return None
        self._last_answer[entry_id] = now
        recent.append(now)
        c["answered"] += 1
        return found
