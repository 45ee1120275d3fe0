"""FAQ auto-answer: normalisation, fuzzy matching, rate limits, validation, plugins."""

import importlib
import sys
import textwrap

import pytest

from sfu import faq
from sfu.errors import BadRequest, Conflict, InternalError, LimitExceeded
from sfu.faq import (
    FaqEntry,
    FaqResponder,
    FaqSet,
    FuzzyMatcher,
    Match,
    make_matcher,
    normalize,
    register_matcher,
)

FAQ_PARAMS = [
    {"id": "shipping", "patterns": ["包邮吗", "包不包邮", "是否包邮", "free shipping",
                                    "is shipping free"],
     "answer": "全场包邮（偏远地区除外）/ Free shipping on all orders."},
    {"id": "remote", "patterns": ["新疆包邮吗", "偏远地区包邮吗"],
     "answer": "新疆、西藏需补运费 10 元。"},
    {"id": "when",
     "patterns": ["什么时候发货", "几天发货", "when will it ship", "when do you ship"],
     "answer": "48 小时内发货 / Ships within 48 hours."},
    {"id": "size", "patterns": ["尺码怎么选", "有什么尺码", "what size should i get", "size chart"],
     "answer": "看详情页尺码表 / See the size chart."},
    {"id": "price", "patterns": ["多少钱", "价格多少", "how much is it", "what is the price"],
     "answer": "直播间专享价 99 元。"},
]


@pytest.fixture(scope="module")
def faq_set() -> FaqSet:
    return FaqSet.from_params(FAQ_PARAMS)


@pytest.fixture(scope="module")
def matcher(faq_set) -> FuzzyMatcher:
    return FuzzyMatcher(faq_set)


@pytest.mark.parametrize(("raw", "expected"), [
    ("包邮吗？", "包邮吗"),
    ("ＦＲＥＥ　ＳＨＩＰＰＩＮＧ？？", "free shipping"),  # full-width letters, space, marks
    ("包郵嗎", "包邮吗"),  # traditional
    ("幾號發貨？這個多少錢", "几号发货这个多少钱"),
    ("  Is   SHIPPING\tfree?!  ", "is shipping free"),
    ("What's the price…", "whats the price"),
    ("【包邮】《新品》“好看”", "包邮新品好看"),
    ("包 邮 吗", "包邮吗"),  # no spaces inside Chinese
    ("iPhone 15 有貨嗎", "iphone 15 有货吗"),
    ("😂😂👍🏻❤️", ""),
    ("1️⃣号链接", "1号链接"),
    ("a\u200db\x00c", "a b c"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


MATCHES = [
    # Chinese, with and without punctuation, containment in longer comments
    ("包邮吗", "shipping", 100),
    ("包不包邮", "shipping", 100),
    ("可以包邮吗？", "shipping", 100),
    ("主播，这个包邮吗亲", "shipping", 100),
    ("包郵嗎", "shipping", 100),  # traditional characters
    ("是 否 包 邮", "shipping", 100),
    ("什么时候发货呀", "when", 100),
    ("發貨時間？幾天發貨", "when", 100),
    ("有什么尺码呢", "size", 100),
    ("这个多少钱？", "price", 100),
    # the most specific (longest) contained pattern wins
    ("新疆包邮吗", "remote", 100),
    # fuzzy Chinese: one character missing from a longer pattern
    ("什么时候发", "when", 90),
    # English
    ("Is shipping free?", "shipping", 100),
    ("free shipping??", "shipping", 100),
    ("ＦＲＥＥ ＳＨＩＰＰＩＮＧ", "shipping", 100),
    ("shipping free", "shipping", 100),  # word order
    ("shiping free", "shipping", 90),  # typo
    ("hi is there free shipping to canada", "shipping", 100),
    ("When will it ship???", "when", 100),
    ("what size should I get? 5'6", "size", 100),
    ("How much is it", "price", 100),
]


@pytest.mark.parametrize(("text", "entry_id", "min_score"), MATCHES)
def test_matches(matcher, text, entry_id, min_score):
    found = matcher.match(text)
    assert found is not None, text
    assert found.entry_id == entry_id
    assert min_score <= found.score <= 100


NON_MATCHES = [
    "主播好漂亮", "哈哈哈", "哈哈哈哈哈哈哈哈", "666", "6666666", "😂😂😂", "👍", "❤️❤️", "？？？",
    "好的", "邮", "a", "", "   ", "hello everyone", "love this color", "the", "free", "is it free",
    "ship", "what is it", "来了来了", "已下单", "第一次来直播间", "这个颜色好看",
    "什么", "时候", "价格",  # contained in longer patterns: partial_ratio alone would say 100
]


@pytest.mark.parametrize("text", NON_MATCHES)
def test_non_matches(matcher, text):
    assert matcher.match(text) is None


def test_threshold_behaviour(faq_set):
    # "几号发货" vs the pattern "几天发货": one of four characters differs → score 75.
    strict, loose = FuzzyMatcher(faq_set, threshold=80), FuzzyMatcher(faq_set, threshold=70)
    assert strict.match("几号发货") is None
    found = loose.match("几号发货")
    assert found is not None and found.entry_id == "when" and 70 <= found.score < 80
    assert FuzzyMatcher(faq_set, threshold=100).match("shiping free") is None
    assert FuzzyMatcher(faq_set, threshold=100).match("包邮吗亲").entry_id == "shipping"
    for bad in (0, 49, 101, "80", True, None):
        with pytest.raises(BadRequest, match="threshold"):
            FuzzyMatcher(faq_set, threshold=bad)


def test_single_character_comments_never_match():
    # At threshold 50, "邮" vs "包邮" scores 67: only the length rule keeps it from matching.
    m = FuzzyMatcher([FaqEntry("x", ["包邮", "ok"], "a")], threshold=50)
    assert m.match("邮") is None and m.match("o") is None and m.match("～邮！😂") is None
    assert m.match("包邮").entry_id == "x" and m.match("邮费").entry_id == "x"


def test_matcher_skips_degenerate_patterns():
    # FaqEntry built directly (not via from_params): a pattern that normalises to nothing must
    # not contain-match every comment.
    m = FuzzyMatcher([FaqEntry("x", ["？！", "😂", "邮"], "a"), FaqEntry("y", ["包邮"], "b")])
    assert m.match("随便说点什么") is None
    assert m.match("邮费多少") is None  # a 1-character pattern would contain-match this
    assert m.match("包邮").entry_id == "y"


def test_long_and_hostile_input_does_not_crash(matcher):
    assert matcher.match("包邮吗" * 5000).entry_id == "shipping"
    assert matcher.match("\ud800\udfff\x00\ufeff" * 100) is None  # lone surrogates, controls
    assert matcher.match("x" * 100_000) is None


# --- responder ---------------------------------------------------------------------------


def test_rate_limit_per_question(matcher):
    r = FaqResponder(matcher, per_question_interval_s=10.0, max_answers_per_s=5)
    assert r.on_comment("包邮吗", now=100.0).id == "shipping"
    assert r.on_comment("包邮吗？？", now=105.0) is None  # same question within 10 s
    assert r.on_comment("free shipping", now=109.9) is None  # same entry, other language
    assert r.on_comment("多少钱", now=109.9).id == "price"  # another question is not limited
    assert r.on_comment("包邮吗", now=110.0).id == "shipping"  # interval elapsed
    assert r.on_comment("哈哈哈", now=110.0) is None  # no match is not rate limiting
    assert r.counters == {"comments": 6, "matched": 5, "answered": 3, "rate_limited": 2,
                          "errors": 0}


def test_rate_limit_room_wide(matcher):
    r = FaqResponder(matcher, per_question_interval_s=0.0, max_answers_per_s=2)
    assert r.on_comment("包邮吗", now=1.0) is not None
    assert r.on_comment("多少钱", now=1.2) is not None
    assert r.on_comment("尺码怎么选", now=1.5) is None  # third answer inside one second
    assert r.on_comment("几天发货", now=1.99) is None
    assert r.on_comment("几天发货", now=2.0).id == "when"  # the 1.0 answer left the window
    assert r.on_comment("size chart", now=2.1) is None  # 1.2 and 2.0 still inside
    assert r.on_comment("size chart", now=2.3).id == "size"
    c = r.counters
    assert (c["answered"], c["rate_limited"], c["matched"]) == (4, 3, 7)


def test_responder_survives_failing_matcher():
    class Broken:
        def match(self, text: str) -> Match | None:
            raise RuntimeError("plugin bug")

    r = FaqResponder(Broken())
    assert r.on_comment("包邮吗", now=0.0) is None
    assert r.on_comment(b"bytes", now=0.0) is None  # type: ignore[arg-type]
    assert r.counters["errors"] == 1 and r.counters["comments"] == 2


@pytest.mark.parametrize("kwargs", [
    {"per_question_interval_s": -1}, {"per_question_interval_s": "10"},
    {"max_answers_per_s": 0}, {"max_answers_per_s": 2.5},
])
def test_responder_validates(matcher, kwargs):
    with pytest.raises(BadRequest):
        FaqResponder(matcher, **kwargs)


# --- validation ----------------------------------------------------------------------------


def _entry(**over):
    base = {"patterns": ["包邮吗"], "answer": "包邮"}
    base.update(over)
    return base


@pytest.mark.parametrize(("raw", "error", "message"), [
    ({"patterns": []}, BadRequest, "faq must be a list"),
    ([_entry(), "x"], BadRequest, r"faq\[1\] must be a map"),
    ([_entry(extra=1)], BadRequest, r"faq\[0\] has unknown field\(s\) 'extra'"),
    ([_entry(), _entry(patterns=["ok", ""])], BadRequest,
     r"faq\[1\]\.patterns\[1\] must be a non-empty string of at most 200 characters"),
    ([_entry(patterns=["好" * 201])], BadRequest, r"faq\[0\]\.patterns\[0\] must be a non-empty"),
    ([_entry(patterns=[7])], BadRequest, r"faq\[0\]\.patterns\[0\] must be"),
    ([_entry(patterns=["？！"])], BadRequest, r"faq\[0\]\.patterns\[0\] .* after normalisation"),
    ([_entry(patterns=[])], BadRequest, r"faq\[0\]\.patterns must be a list of 1 to 20"),
    ([_entry(patterns="包邮吗")], BadRequest, r"faq\[0\]\.patterns must be a list"),
    ([{"answer": "x"}], BadRequest, r"faq\[0\]\.patterns must be a list"),
    ([_entry(patterns=["包邮吗"] * 21)], LimitExceeded, r"faq\[0\]\.patterns has 21 patterns"),
    ([_entry(answer="")], BadRequest,
     r"faq\[0\]\.answer must be a non-empty string of at most 500"),
    ([_entry(answer="x" * 501)], BadRequest, r"faq\[0\]\.answer"),
    ([{"patterns": ["包邮吗"]}], BadRequest, r"faq\[0\]\.answer"),
    ([_entry(id="")], BadRequest, r"faq\[0\]\.id must be a non-empty string of at most 64"),
    ([_entry(id=3)], BadRequest, r"faq\[0\]\.id"),
    ([_entry(id="a"), _entry(id="a")], BadRequest, r"faq\[1\]\.id 'a' duplicates faq\[0\]\.id"),
    ([_entry()] * 501, LimitExceeded, "faq has 501 entries; at most 500"),
])
def test_validation_errors(raw, error, message):
    with pytest.raises(error, match=message):
        FaqSet.from_params(raw)


def test_validation_accepts_limits_and_defaults_ids():
    entries = [_entry(patterns=[f"问题{i}号" + "好" * 190] * 20, answer="答" * 500)
               for i in range(500)]
    s = FaqSet.from_params(entries)
    assert len(s) == 500 and s.entries[0].id == "faq-0" and s.get("faq-499") is not None
    assert FaqSet.from_params([]).entries == ()


# --- plugins -------------------------------------------------------------------------------


class KeywordMatcher:
    """A test plugin: answers when a keyword from options appears, score from options."""

    def __init__(self, entries, options):
        self.entries = list(entries)
        self.keyword = options["keyword"]

    def match(self, text: str) -> Match | None:
        return Match(self.entries[0], 77.0, self.keyword) if self.keyword in text else None


def test_register_and_use_plugin(faq_set):
    register_matcher("keyword-test", KeywordMatcher)
    register_matcher("keyword-test", KeywordMatcher)  # same factory again: no-op
    m = make_matcher("keyword-test", faq_set, {"keyword": "发票"})
    assert isinstance(m, KeywordMatcher)
    r = FaqResponder(m)
    assert r.on_comment("能开发票吗", now=0.0).id == "shipping"
    assert r.on_comment("包邮吗", now=20.0) is None  # the plugin, not the fuzzy matcher, decides
    with pytest.raises(Conflict):
        register_matcher("keyword-test", lambda entries, options: KeywordMatcher(entries, options))
    with pytest.raises(Conflict):
        register_matcher("fuzzy", KeywordMatcher)
    assert "keyword-test" in faq.known_matchers()


def test_make_matcher_fuzzy_and_errors(faq_set):
    m = make_matcher("fuzzy", faq_set, {"threshold": 70})
    assert m.match("几号发货").entry_id == "when"
    with pytest.raises(BadRequest, match="unknown fuzzy matcher option"):
        make_matcher("fuzzy", faq_set, {"treshold": 70})
    with pytest.raises(BadRequest, match=r"unknown FAQ matcher 'nope'; known: .*fuzzy"):
        make_matcher("nope", faq_set)
    register_matcher("not-a-matcher-test", lambda entries, options: object(), replace=True)
    with pytest.raises(InternalError, match="no match"):
        make_matcher("not-a-matcher-test", faq_set)
    register_matcher("raising-test", lambda entries, options: options["missing"], replace=True)
    with pytest.raises(InternalError, match="failed to build"):
        make_matcher("raising-test", faq_set)


def test_entry_point_plugin_is_loaded_lazily(tmp_path, monkeypatch, faq_set):
    # A real installed-distribution layout on sys.path; importlib.metadata discovers it.
    (tmp_path / "sfu_faq_test_plugin.py").write_text(textwrap.dedent("""
        from sfu.faq import Match

        class First:
            def __init__(self, entries, options):
                self.entry = list(entries)[-1]

            def match(self, text):
                return Match(self.entry, 99.0) if text else None

        def factory(entries, options):
            return First(entries, options)
    """))
    dist = tmp_path / "sfu_faq_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sfu-faq-test-plugin\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[sfu.faq_matchers]\nfirst-test = sfu_faq_test_plugin:factory\n"
        "broken-test = sfu_faq_test_plugin:missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(faq, "_FACTORIES", dict(faq._FACTORIES))  # keep the registry clean
    assert "sfu_faq_test_plugin" not in sys.modules
    assert {"first-test", "broken-test"} <= set(faq.known_matchers())
    assert "sfu_faq_test_plugin" not in sys.modules  # listing names does not import plugins
    m = make_matcher("first-test", faq_set)
    assert m.match("anything").entry_id == "price"
    with pytest.raises(InternalError, match="broken-test.*failed to load"):
        make_matcher("broken-test", faq_set)
    sys.modules.pop("sfu_faq_test_plugin", None)
