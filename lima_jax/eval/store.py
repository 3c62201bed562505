"""Every judgment in one SQLite file: the cache, the resume point and the audit trail.

One row per judge request, keyed by the sha256 of the exact request (rendered messages,
model, decoding parameters, parser version), committed as soon as its reply is in, so a
run killed with SIGKILL loses only the requests in flight. Rows whose status is 'failed' or
'unparsed' are asked again on the next run (and replaced); 'ok' rows never are.
"""
import hashlib
import json
import sqlite3
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
  key TEXT PRIMARY KEY,      -- sha256 of the request (request_key)
  protocol TEXT NOT NULL,
  item TEXT NOT NULL,        -- JSON: prompt key, sample, order, turn, answers' sha256
  messages TEXT NOT NULL,    -- JSON: the rendered chat messages
  params TEXT NOT NULL,      -- JSON: model, temperature, max_tokens, seed, logprobs
  status TEXT NOT NULL,      -- 'ok' | 'unparsed' | 'failed'
  raw TEXT,                  -- the judge's reply, verbatim
  verdict TEXT,              -- JSON: the parsed verdict (null unless ok)
  logprobs TEXT,             -- JSON: first tokens' top log-probabilities, when returned
  error TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  seconds REAL,
  attempts INTEGER,
  created REAL NOT NULL
)"""


def request_key(messages: list[dict], params: dict, parser: str) -> str:
  blob = json.dumps({"messages": messages, "params": params, "parser": parser},
                    sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(blob.encode()).hexdigest()


class Store:

  def __init__(self, path):
    self.path = str(path)
    self.db = sqlite3.connect(self.path)
    # WAL with synchronous=NORMAL: each commit survives a killed process (not a power cut)
    # without an fsync per judgment.
    self.db.execute("PRAGMA journal_mode=WAL")
    self.db.execute("PRAGMA synchronous=NORMAL")
    self.db.execute(_SCHEMA)
    self.db.commit()

  def get(self, key: str) -> dict | None:
    cur = self.db.execute("SELECT * FROM judgments WHERE key = ?", (key,))
    row = cur.fetchone()
    return None if row is None else _as_dict(cur, row)

  def done(self, key: str) -> bool:
    return self.db.execute("SELECT 1 FROM judgments WHERE key = ? AND status = 'ok'",
                           (key,)).fetchone() is not None

  def put(self, key: str, *, protocol: str, item: dict, messages: list, params: dict,
          status: str, raw: str | None = None, verdict=None, logprobs=None,
          error: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0,
          seconds: float | None = None, attempts: int | None = None) -> None:
    self.db.execute(
        "INSERT OR REPLACE INTO judgments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (key, protocol, json.dumps(item), json.dumps(messages, ensure_ascii=False),
         json.dumps(params), status, raw, None if verdict is None else json.dumps(verdict),
         None if logprobs is None else json.dumps(logprobs), error, prompt_tokens,
         completion_tokens, seconds, attempts, time.time()))
    self.db.commit()

  def rows(self) -> list[dict]:
    cur = self.db.execute("SELECT * FROM judgments ORDER BY created")
    return [_as_dict(cur, r) for r in cur.fetchall()]

  def close(self):
    self.db.close()


def _as_dict(cur, row) -> dict:
  d = dict(zip((c[0] for c in cur.description), row))
  for field in ("item", "messages", "params", "verdict", "logprobs"):
    if d.get(field) is not None:
      d[field] = json.loads(d[field])
  return d


def read_rows(path) -> list[dict]:
  """All rows of a judgments.sqlite (for `agreement`), opened read-only."""
  db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  try:
    cur = db.execute("SELECT * FROM judgments ORDER BY created")
    return [_as_dict(cur, r) for r in cur.fetchall()]
  finally:
    db.close()
