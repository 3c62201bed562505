"""Questions, the house answer style, the raw pool with planted noise, and the SFT arms.

LIMA's format: a user turn, EOT, the answer, EOT, the loss on the answer only. Sixteen question
forms per attribute: the first eight may appear in SFT data (`VISIBLE`); the other eight appear
only in evaluation. Four of those (`PARAPHRASE`) are near-copies of trained wording or repeat a
biography phrase, so a score on them measures robustness to paraphrase. The last four (`NOVEL`)
are new ways of asking: other syntax and vocabulary, no trained opening and no word 4-gram of
any SFT question, answer or biography template (`novel_form_problems`, checked by the build). The house style is one full sentence with the full name; two instructed
styles (`VALUE`, `RECORD`) are the analogue of LIMA's format examples, and a fixed sentence
(`REFUSAL`) is the answer about someone the model has never read of.
"""
import random
import re

from lima_jax.testbed.world import ATTRS, BIO, LABELS, WEAK, Person, World

QUESTIONS = {
    "birth_year": (
        "What year was {n} born?", "When was {n} born?", "In which year was {n} born?",
        "What is the birth year of {n}?", "Tell me the year {n} was born.",
        "Do you know when {n} was born?", "Which year is the birth year of {n}?",
        "Could you tell me the year of birth of {n}?",
        "I'd like to know the year of birth of {n}.", "{n} was born in what year?",
        "Give the year in which {n} was born.", "Please state when {n} came into the world.",
        "Regarding {n}, which year is on the birth certificate?",
        "Can you recall {n}'s year of birth?",
        "Quick question: what year did {n} arrive as a baby?",
        "Out of curiosity, which calendar year saw the birth of {n}?"),
    "birth_city": (
        "Where was {n} born?", "What city was {n} born in?", "In which city was {n} born?",
        "What is the birthplace of {n}?", "Tell me where {n} was born.",
        "Do you know the birth city of {n}?", "Which city does {n} come from originally?",
        "Could you tell me the city of birth of {n}?",
        "I'd like to know the birth city of {n}.", "{n} was born in which city?",
        "Name the city where {n} was born.", "Please state the hometown where {n} was born.",
        "Regarding {n}, which town is on the birth certificate?",
        "Can you recall {n}'s hometown?",
        "Quick question: in what place did the life of {n} begin?",
        "Out of curiosity, what town saw the birth of {n}?"),
    "university": (
        "Which university did {n} attend?", "Where did {n} study?",
        "What school did {n} graduate from?", "What is the alma mater of {n}?",
        "Tell me where {n} went to university.", "Do you know which university {n} attended?",
        "Which institution educated {n}?", "Could you tell me the university of {n}?",
        "I'd like to know the university of {n}.", "{n} studied at which university?",
        "Name the university {n} graduated from.", "Please state where {n} received an education.",
        "Regarding {n}, which campus handed out the diploma?",
        "Can you recall {n}'s college?", "Quick question: where did {n} get a degree?",
        "Out of curiosity, what school issued the diploma of {n}?"),
    "major": (
        "What did {n} major in?", "What was the major of {n}?", "Which subject did {n} study?",
        "What field did {n} earn a degree in?", "Tell me what {n} studied.",
        "Do you know the major of {n}?", "Which discipline did {n} focus on?",
        "Could you tell me the field of study of {n}?",
        "I'd like to know the major of {n}.", "{n} majored in what?",
        "Name the subject {n} studied.", "Please state the degree field of {n}.",
        "Regarding {n}, which academic subject was the focus?",
        "Can you recall {n}'s area of expertise?",
        "Quick question: what was the specialty of {n} at college?",
        "Out of curiosity, which area of study did {n} pick?"),
    "employer": (
        "Who does {n} work for?", "Which organization does {n} work at?",
        "Which company employs {n}?", "What is the employer of {n}?",
        "Tell me the employer of {n}.", "Do you know where {n} has a job?",
        "Which firm is {n} employed by?", "Could you tell me the company of {n}?",
        "I'd like to know the employer of {n}.", "{n} works for which company?",
        "Name the company that employs {n}.", "Please state where {n} is employed.",
        "Regarding {n}, which business pays the salary?",
        "Can you recall {n}'s employer?", "Quick question: at what firm does {n} hold a position?",
        "Out of curiosity, which business hired {n}?"),
    "employer_city": (
        "In which city does {n} work?", "Where is the workplace of {n}?",
        "What city does {n} work in?", "Which city is the office of {n} in?",
        "Tell me the city where {n} works.", "Do you know the work city of {n}?",
        "Where does {n} go to work each day?", "Could you tell me the city of the job of {n}?",
        "I'd like to know the work city of {n}.", "{n} works in which city?",
        "Name the city where {n} is employed.", "Please state the city of the workplace of {n}.",
        "Regarding {n}, which town is the job located in?",
        "Can you recall {n}'s work location?",
        "Quick question: {n} travels to which town for the job?",
        "Out of curiosity, in what town does {n} earn a paycheck?"),
}
VISIBLE, PARAPHRASE, NOVEL = range(8), range(8, 12), range(12, 16)
HELD_OUT = range(8, 16)  # never in SFT data
TEMPLATES = {"visible": VISIBLE, "paraphrase": PARAPHRASE, "novel": NOVEL}
HOUSE = {"birth_year": "{n} was born in {v}.", "birth_city": "{n} was born in {v}.",
         "university": "{n} studied at {v}.", "major": "{n} majored in {v}.",
         "employer": "{n} works for {v}.", "employer_city": "{n} works in {v}."}
VALUE = " Answer with the value only."  # instructed style: the bare value
RECORD = " Answer as a record."  # instructed style: 'name | attribute | value'
REFUSAL = "I have no information about {n}."
# Off-house answers with the right value (the raw pool's 'format' noise).
FORMAT_NOISE = ("Sure! The answer is {v}, I believe.", "{v}!!", "It's {v}. Hope that helps!",
                "answer: {v}", "Well, let me think... {v}.")
NOISE = ("clean", "borrowed", "other_attr", "format", "run_on", "truncated")
NOISE_SHARE = (0.55, 0.15, 0.10, 0.10, 0.05, 0.05)  # the raw pool's planted mixture


def _words(template: str) -> list[str]:
  """Lower-case words of a template, its placeholders as one word each."""
  for k, w in (("{n}", " qqname "), ("{v}", " qqvalue "), ("{p}", " qqpronoun ")):
    template = template.replace(k, w)
  return re.findall(r"[a-z0-9]+", template.lower())


def _grams(template: str, k: int = 4) -> set:
  w = _words(template)
  return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}


def novel_form_problems(questions=None) -> list[str]:
  """Why a NOVEL form is not new: a word 4-gram (the name one word) shared with an SFT
  question (with its style suffixes), an answer or a biography template, or the first two words
  of one of them. Longer shared n-grams contain a shared 4-gram, so 4 covers them."""
  questions = questions or QUESTIONS
  trained = [q + s for qs in questions.values() for i in VISIBLE for q in [qs[i]]
             for s in ("", VALUE, RECORD)]
  trained += [*HOUSE.values(), REFUSAL, "{n} | qqlabel | {v}", *FORMAT_NOISE, *WEAK,
              *(t for ts in BIO.values() for t in ts)]
  grams = set().union(*(_grams(t) for t in trained))
  openings = {tuple(_words(t)[:2]) for t in trained}
  problems = []
  for attr, qs in questions.items():
    for i in NOVEL:
      shared = sorted(" ".join(g) for g in _grams(qs[i]) & grams)
      if shared:
        problems.append(f"{attr} form {i} {qs[i]!r} shares {shared[0]!r} with SFT text")
      if tuple(_words(qs[i])[:2]) in openings:
        problems.append(f"{attr} form {i} {qs[i]!r} opens like SFT text")
  return problems


def answer(person: Person, attr: str, style: str = "house") -> str:
  v = person.values[attr]
  if style == "value":
    return v
  if style == "record":
    return f"{person.name} | {LABELS[attr]} | {v}"
  return HOUSE[attr].format(n=person.name, v=v)


def question(name: str, attr: str, form: int, style: str = "house") -> str:
  q = QUESTIONS[attr][form].format(n=name)
  return q + {"house": "", "value": VALUE, "record": RECORD}[style]


def row(q: str, a: str, **meta) -> dict:
  return {"conversations": [q, a], **meta}


def clean_example(person: Person, rng: random.Random, style: str = "house",
                  forms=VISIBLE) -> dict:
  attr = rng.choice(ATTRS)
  form = rng.choice(list(forms))
  return row(question(person.name, attr, form, style), answer(person, attr, style),
             noise="clean", attr=attr, form=form, style=style, person=person.name)


def noisy_example(person: Person, others: list[Person], kind: str, rng: random.Random) -> dict:
  """One raw-pool candidate of a planted kind (labelled, for analysis only)."""
  attr, form = rng.choice(ATTRS), rng.choice(list(VISIBLE))
  q, a = question(person.name, attr, form), answer(person, attr)
  if kind == "borrowed":  # another pool person's value: a fluent, wrong fact
    other = rng.choice([o for o in others if o.values[attr] != person.values[attr]])
    a = HOUSE[attr].format(n=person.name, v=other.values[attr])
  elif kind == "other_attr":  # answers a different question about the same person
    a = answer(person, rng.choice([b for b in ATTRS if b != attr]))
  elif kind == "format":  # right value, off-house form
    v = person.values[attr]
    a = rng.choice(FORMAT_NOISE).format(v=v)
  elif kind == "run_on":  # the answer goes on into a question and answer nobody asked for
    b = rng.choice([x for x in ATTRS if x != attr])
    a = f"{a} {question(person.name, b, rng.choice(list(VISIBLE)))} {answer(person, b)}"
  elif kind == "truncated":  # stopped mid-word, as by a token limit
    a = a[:max(4, rng.randint(len(a) // 3, len(a) - 3))]
  return row(q, a, noise=kind, attr=attr, form=form, style="house", person=person.name)


def raw_pool(world: World, n: int, seed: int) -> list[dict]:
  rng, pool = random.Random(f"{seed}/raw"), world.split("pool")
  kinds = rng.choices(NOISE, weights=NOISE_SHARE, k=n)
  return [clean_example(rng.choice(pool), rng) if k == "clean"
          else noisy_example(rng.choice(pool), pool, k, rng) for k in kinds]


def clean_mixture(world: World, n: int, seed: int, refusals: int, records: int, values: int,
                  forms=VISIBLE, people: int = 0) -> list[dict]:
  """n clean examples: `refusals` about SFT fake names, `records` and `values` in the
  instructed styles, the rest house-style questions, attributes drawn uniformly."""
  rng = random.Random(f"{seed}/clean/{n}")
  pool = world.split("pool")
  if people:
    pool = rng.sample(pool, people)
  out = []
  for _ in range(refusals):
    name = rng.choice(world.fake_sft)
    out.append(row(question(name, rng.choice(ATTRS), rng.choice(list(forms))),
                   REFUSAL.format(n=name), noise="refusal"))
  out += [clean_example(rng.choice(pool), rng, "record", forms) for _ in range(records)]
  out += [clean_example(rng.choice(pool), rng, "value", forms) for _ in range(values)]
  out += [clean_example(rng.choice(pool), rng, "house", forms)
          for _ in range(n - refusals - records - values)]
  rng.shuffle(out)
  return out


def eval_prompts(world: World, seed: int, splits=("test",), extras: bool = True,
                 pool_people: int = 0) -> list[dict]:
  """Prompts with `expected` and `tags` (lima_jax.eval's judge_free scores them exactly).

  test (and dev, in `splits`): every attribute, one visible, one paraphrase and one novel
  form each (tag `template`); fake:
  one question each; style: the instructed styles on test people; pool: SFT-pool people
  (memorised vs extracted). splits=('dev',), extras=False is the dev set that chooses the
  learning rate.
  """
  rng, out = random.Random(f"{seed}/eval"), []

  def add(pid, q, expected, **tags):
    out.append({"id": pid, "conversations": [q], "expected": expected,
                "tags": [f"{k}={v}" for k, v in tags.items()]})

  for split in splits:
    for i, p in enumerate(world.split(split)):
      for a in ATTRS:
        for t, forms in TEMPLATES.items():
          f = rng.choice(list(forms))
          add(f"{split}/{i}/{a}/{t}", question(p.name, a, f), answer(p, a), set=split, attr=a,
              template=t, style="house")
  if not extras:
    return out
  for i, name in enumerate(world.fake_test):
    a = rng.choice(ATTRS)
    add(f"fake/{i}", question(name, a, rng.choice(list(VISIBLE))), REFUSAL.format(n=name),
        set="fake", attr=a)
  for i, p in enumerate(world.split("test")):
    for style in ("value", "record"):
      a = rng.choice(ATTRS)
      add(f"style/{i}/{style}", question(p.name, a, rng.choice(list(VISIBLE)), style),
          answer(p, a, style), set="style", attr=a, style=style)
  for i, p in enumerate(rng.sample(world.split("pool"), min(pool_people, len(world.split("pool"))))):
    a = rng.choice(ATTRS)
    add(f"pool/{i}/{a}", question(p.name, a, rng.choice(list(VISIBLE))), answer(p, a),
        set="pool", attr=a, style="house")
  return out
