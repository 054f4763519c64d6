"""Build `data/yelp_sample/` (hub layout: data/{train,test}-*.parquet) from the hand-written reviews in
`data/yelp_sample_source/*.txt` (`### stars: N` header, then the review; blank lines separate paragraphs).

Stored like `yelp_review_full`: line breaks as the two characters backslash + n, double quotes escaped as \\",
`label` a ClassLabel 0..4 with the dataset's names, then `text`. The split is stratified and seeded, so
re-running this script reproduces the committed files byte for byte.
    python data/build_yelp_sample.py
"""

import random
import re
from pathlib import Path

import datasets

HERE = Path(__file__).parent
SOURCE, TARGET = HERE / "yelp_sample_source", HERE / "yelp_sample"
LABEL_NAMES = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]  # spelled as in yelp_review_full
TEST_PER_STAR = 24
HEADER = re.compile(r"^### stars: ([1-5])\s*$", re.MULTILINE)


def read_reviews() -> list[tuple[int, str]]:
    reviews = []
    for path in sorted(SOURCE.glob("*.txt")):
        parts = HEADER.split(path.read_text(encoding="utf-8"))[1:]
        reviews += [(int(stars), body.strip()) for stars, body in zip(parts[::2], parts[1::2], strict=True)]
    return reviews


def as_yelp_text(review: str) -> str:
    """Yelp's dump escapes line breaks and double quotes; keep that quirk so the sample looks like the real data."""
    return review.replace('"', '\\"').replace("\n", "\\n")


def build() -> datasets.DatasetDict:
    rng = random.Random(20261130)
    by_star: dict[int, list[str]] = {stars: [] for stars in range(1, 6)}
    for stars, review in read_reviews():
        by_star[stars].append(as_yelp_text(review))
    splits: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for stars, texts in by_star.items():
        rng.shuffle(texts)
        splits["test"] += [(stars - 1, text) for text in texts[:TEST_PER_STAR]]
        splits["train"] += [(stars - 1, text) for text in texts[TEST_PER_STAR:]]
    features = datasets.Features({"label": datasets.ClassLabel(names=LABEL_NAMES), "text": datasets.Value("string")})
    result = {}
    for name, rows in splits.items():
        rng.shuffle(rows)
        result[name] = datasets.Dataset.from_dict(
            {"label": [label for label, _ in rows], "text": [text for _, text in rows]}, features=features
        )
    return datasets.DatasetDict(result)


if __name__ == "__main__":
    sample = build()
    (TARGET / "data").mkdir(parents=True, exist_ok=True)
    for name, split in sample.items():
        split.to_parquet(str(TARGET / "data" / f"{name}-00000-of-00001.parquet"))
    print(sample)
