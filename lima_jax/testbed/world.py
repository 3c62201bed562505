"""The bioworld: fictional people with six attributes, and the biographies a base model reads.

Everything is a pure function of the config's sizes and seed. Names, cities, universities and
employers are made from syllables by a fixed generator (`_VOCAB_SEED`), so two worlds of
different seeds share their vocabulary and differ in who is who. Physics of Language Models
Part 3.1 (Allen-Zhu & Li) is the design: with five rewrites per person, shuffled sentences and
the full name in every sentence (the strong corpus) a model stores facts so that question
answering can extract them for people never seen in fine-tuning; one fixed biography with
pronouns (the weak corpus) stores them tied to their context, and extraction fails.

Every biography sentence ends with its attribute's value, so a cloze prompt is the text up
to the value and the answer is the value followed by '.'.
"""
import dataclasses
import random

ATTRS = ("birth_year", "birth_city", "university", "major", "employer", "employer_city")
LABELS = {"birth_year": "birth year", "birth_city": "birth city", "university": "university",
          "major": "major", "employer": "employer", "employer_city": "employer city"}
_VOCAB_SEED = 20261204  # the syllable generator's own seed: the same vocabulary in every world

MAJORS = ("Physics", "Chemistry", "Biology", "Mathematics", "History", "Economics", "Philosophy",
          "Linguistics", "Geology", "Astronomy", "Sociology", "Psychology", "Architecture",
          "Music", "Statistics", "Computer Science", "Mechanical Engineering", "Civil Engineering",
          "Political Science", "Anthropology", "Literature", "Art History", "Nursing", "Law",
          "Medicine", "Accounting", "Marketing", "Journalism", "Oceanography", "Agriculture")

# Biography sentences: five forms per attribute, the value always last.
BIO = {
    "birth_year": ("{n} was born in {v}.", "{n} came into the world in {v}.",
                   "The birth year of {n} is {v}.", "{n} celebrates a birthday for a birth in {v}.",
                   "{n} entered life in the year {v}."),
    "birth_city": ("{n} was born in the city of {v}.", "{n} spent the early years of life in {v}.",
                   "The birthplace of {n} is {v}.", "{n} grew up as a child in {v}.",
                   "{n} first saw daylight in {v}."),
    "university": ("{n} studied at {v}.", "{n} received an education at {v}.",
                   "{n} graduated from {v}.", "The alma mater of {n} is {v}.",
                   "{n} attended classes at {v}."),
    "major": ("{n} majored in {v}.", "{n} earned a degree in {v}.",
              "The field that {n} studied was {v}.", "{n} focused the studies on {v}.",
              "{n} completed a program in {v}."),
    "employer": ("{n} works for {v}.", "{n} is employed by {v}.", "{n} has a job at {v}.",
                 "The employer of {n} is {v}.", "{n} earns a living at {v}."),
    "employer_city": ("{n} works in the city of {v}.", "{n} commutes to an office in {v}.",
                      "The workplace of {n} is located in {v}.", "{n} lives and works in {v}.",
                      "{n} has an office in {v}."),
}
# The weak corpus: one fixed biography, the name once, then pronouns.
WEAK = ("{n} was born in {v}.", "{p} was born in the city of {v}.", "{p} studied at {v}.",
        "{p} majored in {v}.", "{p} works for {v}.", "{p} works in the city of {v}.")


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  pronoun: str  # 'He' or 'She'
  values: dict  # attr -> value (str)
  split: str  # 'pool' (SFT may use them) | 'dev' (learning rate) | 'test' (never in SFT)


@dataclasses.dataclass(frozen=True)
class World:
  people: tuple[Person, ...]
  fake_sft: tuple[str, ...]  # names never in pretraining; SFT teaches refusing them
  fake_test: tuple[str, ...]  # names never in pretraining nor SFT: refusal is tested on them
  employer_city: dict  # employer -> its city (the employer city is derived, as in Physics)

  def split(self, name: str) -> list[Person]:
    return [p for p in self.people if p.split == name]


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set) -> list[str]:
  onsets = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
            "br", "dr", "gr", "kr", "st", "th", "sh", "ch", "cl", "fl", "tr", "")
  vowels = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "ia", "y")
  codas = ("", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x")
  out = []
  while len(out) < n:
    k = rng.randint(*syllables)
    word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k))
    word = word.capitalize()
    if 3 <= len(word) <= 8 and word not in taken:
      taken.add(word)
      out.append(word)
  return out


def vocabulary(n_first: int = 150, n_last: int = 200, n_cities: int = 60, n_universities: int = 40,
               n_employers: int = 40, n_employer_cities: int = 12) -> dict:
  """The value pools, the same in every world (one fixed generator)."""
  rng, taken = random.Random(_VOCAB_SEED), set()
  first = _names(rng, n_first, (1, 2), taken)
  last = _names(rng, n_last, (2, 2), taken)
  places = _names(rng, n_cities + n_employer_cities + n_universities + n_employers, (2, 3), taken)
  cities = places[:n_cities]
  work_cities = places[n_cities:n_cities + n_employer_cities]
  uni_roots = places[n_cities + n_employer_cities:n_cities + n_employer_cities + n_universities]
  firm_roots = places[n_cities + n_employer_cities + n_universities:]
  uni_forms = ("University of {}", "{} Institute of Technology", "{} College", "{} State University")
  universities = [uni_forms[i % len(uni_forms)].format(r) for i, r in enumerate(uni_roots)]
  firm_forms = ("{} Systems", "{} Labs", "{} Industries", "{} Foods", "{} Motors", "{} Bank",
                "{} Logistics", "{} Media")
  employers = [firm_forms[i % len(firm_forms)].format(r) for i, r in enumerate(firm_roots)]
  # One city holds 6 of the 40 employers (15%): the majority baseline of the employer city.
  hq = {e: work_cities[0] if i < 6 else work_cities[1 + i % (n_employer_cities - 1)]
        for i, e in enumerate(employers)}
  return {"first": first, "last": last, "cities": cities, "universities": universities,
          "majors": list(MAJORS), "employers": employers, "employer_city": hq,
          "years": [str(y) for y in range(1900, 2000)]}


def make_world(n_pool: int, n_dev: int, n_test: int, n_fake_sft: int, n_fake_test: int,
               seed: int) -> World:
  """People with unique full names and uniform independent attributes (the employer city
  follows the employer); fake names are unused first-last pairs of the same name pieces."""
  voc, rng = vocabulary(), random.Random(seed)
  n_real = n_pool + n_dev + n_test
  pairs = [(f, l) for f in voc["first"] for l in voc["last"]]
  rng.shuffle(pairs)
  if n_real + n_fake_sft + n_fake_test > len(pairs):
    raise ValueError(f"at most {len(pairs)} distinct names, asked for "
                     f"{n_real + n_fake_sft + n_fake_test}")
  names = [f"{f} {l}" for f, l in pairs[:n_real + n_fake_sft + n_fake_test]]
  splits = ["pool"] * n_pool + ["dev"] * n_dev + ["test"] * n_test
  people = []
  for name, split in zip(names[:n_real], splits):
    employer = rng.choice(voc["employers"])
    values = {"birth_year": rng.choice(voc["years"]), "birth_city": rng.choice(voc["cities"]),
              "university": rng.choice(voc["universities"]), "major": rng.choice(voc["majors"]),
              "employer": employer, "employer_city": voc["employer_city"][employer]}
    people.append(Person(name, rng.choice(("He", "She")), values, split))
  fakes = names[n_real:]
  return World(tuple(people), tuple(fakes[:n_fake_sft]), tuple(fakes[n_fake_sft:]),
               voc["employer_city"])


def strong_biographies(person: Person, rewrites: int, rng: random.Random) -> list[str]:
  """`rewrites` biographies: each sentence's form drawn anew, the order shuffled, the full
  name in every sentence."""
  out = []
  for _ in range(rewrites):
    sentences = [rng.choice(BIO[a]).format(n=person.name, v=person.values[a]) for a in ATTRS]
    rng.shuffle(sentences)
    out.append(" ".join(sentences))
  return out


def weak_biography(person: Person) -> str:
  return " ".join(t.format(n=person.name, p=person.pronoun, v=person.values[a])
                  for t, a in zip(WEAK, ATTRS))


def cloze(person: Person, document: str) -> list[tuple[str, str, str]]:
  """(attr, prefix, value) for each attribute of `document`: the text up to the value."""
  out = []
  for a in ATTRS:
    v = person.values[a]
    for end in _ends(document, v):
      out.append((a, document[:end - len(v)].rstrip(" "), v))
      break
  return out


def _ends(document: str, value: str):
  start = 0
  while (i := document.find(value + ".", start)) >= 0:
    yield i + len(value)
    start = i + 1
