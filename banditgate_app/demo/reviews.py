"""Synthetic product reviews with known star ratings, and classifiers of known accuracy.

A review's rating and kind can be read back from its text (each rating has its own
phrases), so a demo backend can answer correctly with a chosen probability, and
the demo can compute what every arm would have earned on the same traffic.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

PHRASES: dict[int, list[str]] = {
    1: ["terrible", "awful purchase", "worst thing I bought", "broke after a day", "total waste"],
    2: ["disappointing", "poor quality", "not worth it", "rather annoying", "mediocre at best"],
    3: ["it is okay", "average overall", "does the job", "nothing special", "fair for the price"],
    4: ["pretty good", "works well", "happy with it", "solid choice", "nice build"],
    5: [
        "excellent",
        "absolutely love it",
        "best purchase ever",
        "perfect in every way",
        "fantastic",
    ],
}
_PHRASE_RATING = {phrase: rating for rating, phrases in PHRASES.items() for phrase in phrases}
FILLER = (
    "the delivery came on tuesday and the box was intact so I set it up in the kitchen "
    "after reading the manual twice because my neighbour had a similar model last year "
    "and we compared the settings the colour matches the photos and the cable is long "
    "enough for the counter I used it every morning for a few weeks before writing this "
    "review my partner tried it on the weekend with the kids who wanted pancakes while "
    "the dog watched from the hallway then we packed it away in the cupboard under sink"
).split()
KINDS = ("short", "long")


@dataclass(frozen=True)
class Review:
    text: str
    rating: int
    kind: str


def make_review(rng: random.Random, kind: str | None = None) -> Review:
    rating = rng.randint(1, 5)
    kind = kind or rng.choice(KINDS)
    phrase = rng.choice(PHRASES[rating])
    if kind == "short":
        extra = rng.sample(FILLER, rng.randint(2, 7))
        text = f"{phrase.capitalize()}. {' '.join(extra)}"
    else:
        body = " ".join(rng.choices(FILLER, k=rng.randint(45, 60)))
        text = f"{body.capitalize()}. In short: {phrase}."
    return Review(text=text, rating=rating, kind=kind)


def read_review(text: str) -> tuple[int, str]:
    """(rating, kind) from a review's text."""
    lowered = text.lower()
    rating = 3
    for phrase, value in _PHRASE_RATING.items():
        if phrase.lower() in lowered:
            rating = value
            break
    kind = "short" if len(text.split()) <= 20 else "long"
    return rating, kind


def _unit(*parts: str) -> float:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Classifier:
    """A review classifier with an accuracy per kind of review."""

    name: str
    accuracy: dict[str, float]
    seed: str = "0"

    def correct(self, text: str) -> bool:
        _, kind = read_review(text)
        return _unit(self.name, self.seed, text) < self.accuracy[kind]

    def predict(self, text: str) -> int:
        rating, _ = read_review(text)
        if self.correct(text):
            return rating
        wrong = [r for r in range(1, 6) if r != rating]
        return wrong[int(_unit("wrong", self.name, self.seed, text) * len(wrong))]


SCENARIOS: dict[str, tuple[Classifier, Classifier]] = {
    # The seed chapter: two models, one better everywhere.
    "seed": (
        Classifier("bert-1", {"short": 0.50, "long": 0.50}),
        Classifier("bert-2", {"short": 0.40, "long": 0.40}),
    ),
    # Each model is best on a different kind of review; equal overall.
    "contextual": (
        Classifier("bert-1", {"short": 0.75, "long": 0.25}),
        Classifier("bert-2", {"short": 0.25, "long": 0.75}),
    ),
}


def review_pool(size: int, seed: int = 0) -> list[Review]:
    rng = random.Random(seed)
    return [make_review(rng) for _ in range(size)]
