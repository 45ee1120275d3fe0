"""FAQ matcher throughput: 200 patterns (40 entries x 5, Chinese and English) vs 500 comments.

Run: .venv/bin/pytest bench/bench_faq.py --benchmark-enable -s -p no:cacheprovider
Each test prints comments/s (one batch of 500 comments per round). The target in issue 5 is
500 comments/s per room; the figure to read is how far above that it stays on this shared
machine. Most bullet comments match nothing, which is the expensive path (containment misses,
then two rapidfuzz passes), so the mix is 60 % chatter.
"""

import random
import time

import pytest

from sfu.faq import FaqResponder, FaqSet, FuzzyMatcher, normalize

# (Chinese question, English question) per FAQ entry.
TOPICS = [
    ("包邮吗", "is shipping free"), ("什么时候发货", "when will it ship"),
    ("尺码怎么选", "what size should i get"), ("多少钱", "how much is it"),
    ("有优惠券吗", "is there a coupon"), ("可以退换吗", "can i return it"),
    ("是正品吗", "is it authentic"), ("有现货吗", "is it in stock"),
    ("什么材质", "what material is it"), ("会掉色吗", "does the color fade"),
    ("能开发票吗", "can i get an invoice"), ("发什么快递", "which courier do you use"),
    ("保质期多久", "what is the shelf life"), ("适合敏感肌吗", "is it ok for sensitive skin"),
    ("孕妇能用吗", "is it safe during pregnancy"), ("有赠品吗", "is there a free gift"),
    ("怎么下单", "how do i order"), ("几号链接", "which link number"),
    ("还会补货吗", "will you restock"), ("有几个颜色", "what colors are there"),
    ("偏大还是偏小", "does it run large or small"), ("多重", "how heavy is it"),
    ("能机洗吗", "is it machine washable"), ("保修多久", "how long is the warranty"),
    ("送货上门吗", "do you deliver to the door"), ("能货到付款吗", "cash on delivery"),
    ("海外能寄吗", "do you ship overseas"), ("可以改地址吗", "can i change my address"),
    ("什么时候开抢", "when does the sale start"), ("限购几件", "is there a purchase limit"),
    ("怎么用", "how do i use it"), ("有味道吗", "does it smell"),
    ("会起球吗", "does it pill"), ("透气吗", "is it breathable"),
    ("防水吗", "is it waterproof"), ("充电多久", "how long to charge"),
    ("续航多久", "how long does the battery last"), ("支持花呗吗", "can i pay in installments"),
    ("和上次一样吗", "same as last time"), ("主播身高多少", "how tall is the host"),
]
ZH_TEMPLATES = ["{}", "请问{}", "主播{}"]
EN_TEMPLATES = ["{}", "can you tell me {}"]
CHATTER = [
    "666", "哈哈哈哈", "主播好美", "来了来了", "买了买了", "已拍", "已下单", "好看", "爱了爱了",
    "👍👍👍", "😂😂", "❤️", "第一次来直播间", "支持主播", "上链接", "冲冲冲", "关注了",
    "hello from canada", "love it", "so cute", "nice", "lol", "this is great",
    "主播今天的衣服真好看", "刚下班就来了", "太便宜了吧", "抢到了开心", "家人们冲",
]


def build_faq() -> FaqSet:
    raw = []
    for i, (zh, en) in enumerate(TOPICS):
        patterns = [t.format(zh) for t in ZH_TEMPLATES] + [t.format(en) for t in EN_TEMPLATES]
        raw.append({"id": f"q{i}", "patterns": patterns, "answer": f"answer {i}"})
    return FaqSet.from_params(raw)


def build_comments(n: int = 500, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        r = rng.random()
        zh, en = rng.choice(TOPICS)
        if r < 0.6:
            out.append(rng.choice(CHATTER))
        elif r < 0.75:
            out.append(f"主播{zh}？" + rng.choice(["", "亲", "😂", "！！"]))
        elif r < 0.85:
            out.append(en.capitalize() + rng.choice(["?", "??", " pls", "!"]))
        elif r < 0.93:  # typo: one character dropped
            q = rng.choice([zh, en])
            k = rng.randrange(len(q))
            out.append(q[:k] + q[k + 1:])
        else:  # long comment around a question
            out.append(f"我昨天在别的直播间看到了，想问一下{zh}，谢谢主播回答一下哈哈哈")
    return out


FAQ = build_faq()
COMMENTS = build_comments()


def _report(benchmark, label: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    mean = benchmark.stats.stats.mean if benchmark.stats else once
    print(f"\n{label}: {len(COMMENTS) / mean:,.0f} comments/s "
          f"({sum(len(e.patterns) for e in FAQ)} patterns, {len(COMMENTS)} comments/round)")


def test_fuzzy_match(benchmark):
    matcher = FuzzyMatcher(FAQ)

    def run() -> int:
        return sum(matcher.match(c) is not None for c in COMMENTS)

    matched = benchmark(run)
    assert 0 < matched < len(COMMENTS)
    _report(benchmark, "FuzzyMatcher.match", run)


def test_responder(benchmark):
    responder = FaqResponder(FuzzyMatcher(FAQ))
    now = [0.0]

    def run() -> int:
        answered = 0
        for c in COMMENTS:
            now[0] += 0.002  # 500 comments/s
            answered += responder.on_comment(c, now[0]) is not None
        return answered

    benchmark(run)
    _report(benchmark, "FaqResponder.on_comment", run)


def test_normalize_only(benchmark):
    def run() -> int:
        return sum(len(normalize(c)) for c in COMMENTS)

    benchmark(run)
    _report(benchmark, "normalize", run)


@pytest.mark.parametrize("n_patterns", [200])
def test_build_matcher(benchmark, n_patterns):
    # Loading a set is a control operation; it should stay well under a frame or two.
    benchmark(FuzzyMatcher, FAQ)
    assert sum(len(e.patterns) for e in FAQ) == n_patterns
