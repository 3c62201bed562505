"""The decoding flags `generate`, `select` and `serve` share: decoding, batch, seed, mesh, dtype,
conversation format (the last also `eval`'s and `data`'s)."""
# Imported where used: eval and data define the format flags without loading JAX for --help.


def define_decoding_flags() -> None:
  """Decoding (defaults: LIMA's), batch, seed, mesh, dtype and the distributed flags."""
  from absl import flags
  from lima_jax.decode.sampling import LIMA as d
  from lima_jax.parallel import distributed
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together (rounded up to a multiple of "
                       "the mesh's batch shards).", lower_bound=1)
  flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Most tokens per answer (LIMA: "
                       "2048); never past the model's context.", lower_bound=1)
  flags.DEFINE_float("temperature", d.temperature, "Sampling temperature (LIMA: 0.7).")
  flags.DEFINE_float("top_p", d.top_p, "Nucleus sampling mass, 1 = off (LIMA: 0.9).")
  flags.DEFINE_integer("top_k", d.top_k, "Keep only the k most likely tokens, 0 = off.")
  flags.DEFINE_float("repetition_penalty", d.repetition_penalty, "CTRL-style penalty on tokens "
                     "already generated in this answer, 1 = off (LIMA: 1.2).")
  flags.DEFINE_bool("greedy", False, "Argmax instead of sampling (the repetition penalty still "
                    "applies; add --repetition_penalty=1 for plain greedy).")
  flags.DEFINE_integer("seed", 0, "Sampling seed; an answer depends on it and on the prompt's "
                       "index in the file, not on the batch size.")
  flags.DEFINE_list("mesh", ["1", "-1", "1"], "Device mesh (data,fsdp,tensor) over every "
                    "device of the job (all hosts); one -1 takes the remaining devices.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype to load (cast while "
                    "restoring; bfloat16 halves a float32 checkpoint). Default: as stored.")
  define_format_flags()
  distributed.define_flags()


def define_format_flags(default: str = "what the checkpoint was trained in; for a converted "
                        "model that carries a template, its template", **kwargs) -> None:
  """--format and --chat_template (generate, select, serve, eval, data). `default`: what the
  command does without --format; kwargs go to absl (module_name, for --help)."""
  from absl import flags
  flags.DEFINE_enum("format", None, ["lima", "chat_template"], "Conversation format: 'lima' "
                    "(BOS, each utterance + EOT) or 'chat_template' (the model's own Jinja "
                    "template; prompts rendered with the generation prompt, answers stop at its "
                    f"end-of-turn token and EOS). Default: {default}.", **kwargs)
  flags.DEFINE_string("chat_template", "", "A Jinja chat template file used instead of the "
                      "model's own (with --format=chat_template).", **kwargs)


def decoding_from_flags(f):
  from lima_jax.decode.sampling import Decoding
  return Decoding(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                  top_k=f.top_k, repetition_penalty=f.repetition_penalty, greedy=f.greedy)


def mesh_from_flags(f):
  from lima_jax.parallel import sharding
  return sharding.make_mesh(sharding.parse_mesh_shape(f.mesh))
