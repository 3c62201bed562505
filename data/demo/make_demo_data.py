"""Writes the demo's bundled data: data/demo/train.jsonl and data/demo/tokenizer.model.

The demo must run on a fresh machine without the LIMA data or the LLaMA tokenizer (their
licences keep them out of the repository), so the project writes its own small conversation
set: templated questions with consistent answers (facts, arithmetic, opposites, short poems,
and a few multi-turn chains), in LIMA's JSONL format. A tiny random-init model can learn these
patterns in a few CPU minutes, which is what the demo shows. Deterministic:

    python data/demo/make_demo_data.py   # rewrites both files
"""
import io
import json
import pathlib
import random

import sentencepiece as spm

HERE = pathlib.Path(__file__).resolve().parent

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo",
    "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Cuba": "Havana", "India": "New Delhi",
}
LEGS = {"spider": 8, "ant": 6, "bee": 6, "dog": 4, "cat": 4, "horse": 4, "bird": 2,
        "chicken": 2, "snake": 0, "fish": 0, "crab": 10, "cow": 4, "duck": 2, "beetle": 6}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
             "up": "down", "early": "late", "open": "closed", "full": "empty", "old": "young",
             "strong": "weak", "loud": "quiet", "rich": "poor", "wet": "dry", "high": "low"}
TOPICS = {
    "sea": ("waves", "blue", "the shore", "sings"), "moon": ("light", "silver", "the night",
                                                            "glows"),
    "forest": ("trees", "green", "the hills", "whispers"), "rain": ("drops", "grey",
                                                                  "the roof", "taps"),
    "sun": ("fire", "gold", "the sky", "burns"), "snow": ("flakes", "white", "the field",
                                                         "rests"),
    "wind": ("air", "cold", "the valley", "runs"), "river": ("water", "clear", "the stones",
                                                            "flows"),
}
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def article(noun: str) -> str:
  return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def poem(topic: str) -> str:
  thing, colour, place, verb = TOPICS[topic]
  return (f"The {topic} {verb} over {place},\n{colour} {thing} that never stay,\n"
          f"I watch the {topic} and I am still,\nand then it slowly goes away.")


def conversations(rng: random.Random):
  for country, city in CAPITALS.items():
    for q in (f"What is the capital of {country}?", f"Which city is the capital of {country}?"):
      yield "facts", [q, f"The capital of {country} is {city}."]
  for animal, n in LEGS.items():
    a = article(animal)
    for q in (f"How many legs does {a} have?", f"How many legs has {a} got?"):
      yield "facts", [q, f"{a.capitalize()} has {NUMBER_WORDS[n]} legs."]
  for word, opp in OPPOSITES.items():
    yield "words", [f"What is the opposite of {word}?", f"The opposite of {word} is {opp}."]
    yield "words", [f"What is the opposite of {opp}?", f"The opposite of {opp} is {word}."]
  for _ in range(160):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    yield "math", [f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."]
  for topic in TOPICS:
    for q in (f"Write a short poem about the {topic}.", f"Can you write a poem about the {topic}?"):
      yield "writing", [q, poem(topic)]
  countries = list(CAPITALS)
  for _ in range(40):
    c1, c2 = rng.sample(countries, 2)
    yield "multi_turn", [f"What is the capital of {c1}?", f"The capital of {c1} is {CAPITALS[c1]}.",
                         f"And of {c2}?", f"The capital of {c2} is {CAPITALS[c2]}."]


def main():
  rng = random.Random(0)
  rows = [{"conversations": turns, "source": source} for source, turns in conversations(rng)]
  rng.shuffle(rows)
  (HERE / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  text = [t for r in rows for t in r["conversations"]]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text), model_writer=model, vocab_size=512, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, num_threads=1, pad_id=-1, bos_id=1,
      eos_id=2, unk_id=0, split_digits=True, normalization_rule_name="identity", minloglevel=2)
  (HERE / "tokenizer.model").write_bytes(model.getvalue())
  print(f"wrote {len(rows)} conversations and a {512}-piece tokenizer to {HERE}")


if __name__ == "__main__":
  main()
