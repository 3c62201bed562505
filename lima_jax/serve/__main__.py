r"""An OpenAI-compatible server for a checkpoint:

    python -m lima_jax.serve --checkpoint=CKPT [--host=127.0.0.1] [--port=8000] [--slots=8]
        [--api_key_env=VAR] [--served_model_name=NAME] [--max_queue=64] [--mesh=1,-1,1]

CKPT is a lima_jax checkpoint (WORKDIR/checkpoints/STEP), a Hugging Face directory (with
tokenizer.model or tokenizer.json; `convert to-hf` writes one) or a GGUF file with its
tokenizer, opened by `lima_jax.formats.model_file`. The port is bound at once; `/health` says
503 until the weights are loaded and every shape is compiled, then 200. Bad flags or an
unreadable checkpoint end with one line on stderr and exit 1.
"""
import logging
import os
import pathlib
import socket
import sys

from lima_jax.errors import UserError

log = logging.getLogger("lima_jax.serve")


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "lima_jax checkpoint directory (its meta holds the "
                      "model config and tokenizer), a Hugging Face directory (tokenizer.model or "
                      "tokenizer.json beside config.json) or a GGUF file.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 opens it to the network "
                      "(then set --api_key_env).")
  flags.DEFINE_integer("port", 8000, "Port to bind (0: any free one, printed at start).",
                       lower_bound=0, upper_bound=65535)
  flags.DEFINE_integer("slots", 8, "Decode slots: choices generated together (rounded up to "
                       "the mesh's batch shards); more wait in the queue.", lower_bound=1)
  flags.DEFINE_integer("max_len", 0, "Tokens a slot holds, prompt plus answer (0: the model's "
                       "context). Smaller saves KV-cache memory.", lower_bound=0)
  flags.DEFINE_string("api_key_env", None, "Name of an environment variable holding the API "
                      "key; then every /v1 route and /tokenize need 'Authorization: Bearer "
                      "KEY' (/health and /metrics stay open). Default: no key.")
  flags.DEFINE_string("served_model_name", "lima_jax", "The model id clients send and "
                      "/v1/models lists.")
  flags.DEFINE_integer("max_queue", 64, "Choices that may wait for a slot; past that requests "
                       "get 429.", lower_bound=0)
  flags.DEFINE_list("mesh", None, "Device mesh (data,fsdp,tensor), one -1 takes the remaining "
                    "devices; default: one device.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype to load. "
                    "Default: as stored.")
  flags.DEFINE_float("keepalive_s", 10.0, "Seconds between SSE keep-alive comments while a "
                     "stream waits.", lower_bound=0.1)
  flags.DEFINE_bool("access_log", False, "Log every HTTP request (uvicorn's access log).")
  from lima_jax.decode.flags import define_format_flags
  define_format_flags()  # --format, --chat_template


def check_checkpoint(path: pathlib.Path) -> None:
  """Fails fast on what can be read in a second (config and tokenizer), before the port and the
  slow load."""
  from lima_jax.formats import model_file
  model_file.read(path, need_tokenizer=True)


def load_engine(path: pathlib.Path, *, slots: int, max_len: int = 0, mesh=None,
                dtype: str | None = None):
  """(Engine, Tokenizer) of any model file `model_file.open` reads (not yet warmed up), in the
  model's own conversation format."""
  return load_model(path, slots=slots, max_len=max_len, mesh=mesh, dtype=dtype)[:2]


def load_model(path: pathlib.Path, *, slots: int, max_len: int = 0, mesh=None,
               dtype: str | None = None, fmt: str | None = None, chat_template: str = ""):
  """(Engine, Tokenizer, renderer): `load_engine` answering in format `fmt` (default the
  model's own; `lima_jax.decode.answer.open_model`)."""
  from lima_jax.decode import answer
  from lima_jax.decode import generator as decoding
  from lima_jax.serve.engine import Engine
  m, renderer = answer.open_model(path, mesh=mesh, dtype=dtype, fmt=fmt,
                                  chat_template=chat_template)
  tok = m.tokenizer
  return Engine(m.params, m.config, tok.vocab_size, slots=slots, max_len=max_len or None,
                mesh=mesh, banned=decoding.banned_ids(tok, renderer.stop_ids)), tok, renderer


def _bind(host: str, port: int) -> socket.socket:
  try:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
  except OSError as e:
    raise UserError(f"--host={host} --port={port}: cannot bind ({e.strerror or e})") from None
  sock.listen(2048)
  sock.set_inheritable(True)
  return sock


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's INFO lines would bury ours
  if not f.checkpoint:
    raise UserError("--checkpoint is required (a lima_jax checkpoint or a HF directory)")
  path = pathlib.Path(f.checkpoint)
  api_key = None
  if f.api_key_env:
    api_key = os.environ.get(f.api_key_env)
    if not api_key:
      raise UserError(f"--api_key_env={f.api_key_env}: that environment variable is not set "
                      "or empty")
  mesh = None
  if f.mesh:
    from lima_jax.decode.flags import mesh_from_flags
    mesh = mesh_from_flags(f)
  check_checkpoint(path)
  sock = _bind(f.host, f.port)
  host, port = sock.getsockname()[:2]

  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False

  import uvicorn
  from lima_jax.serve.api import create_app
  failed = []

  def on_failure(e):
    failed.append(e)
    server.should_exit = True

  app = create_app(lambda: load_model(path, slots=f.slots, max_len=f.max_len, mesh=mesh,
                                      dtype=f.dtype, fmt=f.format, chat_template=f.chat_template),
                   served_model_name=f.served_model_name, api_key=api_key,
                   max_queue=f.max_queue, keepalive_s=f.keepalive_s, on_failure=on_failure)
  config = uvicorn.Config(app, log_level="warning", access_log=f.access_log,
                          timeout_graceful_shutdown=5)
  server = uvicorn.Server(config)
  log.info("serving %s as '%s' on http://%s:%d (loading; /health is 503 until ready)",
           path, f.served_model_name, host, port)
  server.run(sockets=[sock])
  if failed:
    e = failed[0]
    raise UserError(str(e) if isinstance(e, UserError) else f"{path}: loading failed "
                    f"({type(e).__name__}: {e})")


def run() -> None:
  from absl import app
  from lima_jax.errors import cli_main, parse_flags
  _define_flags()
  app.run(cli_main(main), flags_parser=parse_flags)


if __name__ == "__main__":
  run()
