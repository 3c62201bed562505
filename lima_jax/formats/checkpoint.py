"""Checkpoints: one directory per checkpoint, the same layout for training and conversion.

    CKPT/params/     parameter pytree (orbax, restored straight into the target sharding)
    CKPT/opt_state/  optimizer state (training checkpoints only)
    CKPT/meta/       JSON: model_config, tokenizer, step, epoch, ...

A training run keeps `WORKDIR/checkpoints/<step>/` in this layout, so any per-epoch checkpoint can
be handed to `generate`, `convert to-hf` or `model.init` as it is. Orbax writes into a temporary
directory and renames it when complete, so a killed run never leaves a half checkpoint that a
resume would pick up.
"""
import json
import os
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lima_jax.errors import UserError

PyTree = Any


def _abstract(tree: PyTree, shardings: Optional[PyTree], dtype=None) -> PyTree:
  """ShapeDtypeStructs for a restore target; without shardings, everything on one device;
  a dtype casts every array while it is read."""
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=s), tree, shardings)


_MIN_CHUNK_BYTES = 2**20


def _save_args(tree: PyTree) -> PyTree:
  """One storage chunk per layer for stacked parameters (and their optimizer moments), so an
  export or a reader can take one layer slice without decoding the whole stack (orbax's
  default chunk is the whole shard: 57.7 GB for 65B's `mlp/gate` on one host)."""
  def args(path, x):
    if not any(getattr(k, "key", None) == "layers" for k in path) or np.ndim(x) < 2:
      return ocp.SaveArgs()
    shape = x.sharding.shard_shape(x.shape) if isinstance(x, jax.Array) else np.shape(x)
    layer = int(np.prod(shape[1:])) * np.dtype(x.dtype).itemsize
    # Below 1 MiB a layer a chunk holds several (orbax warns about smaller chunks, and such
    # stacks are cheap to read whole anyway).
    return ocp.SaveArgs(chunk_byte_size=max(layer, _MIN_CHUNK_BYTES), shard_axes=(0,))
  return jax.tree_util.tree_map_with_path(args, tree)


def _check_dir(path: epath.Path, items: tuple[str, ...]) -> None:
  if not path.exists():
    raise UserError(f"{path}: checkpoint directory does not exist")
  for item in items:
    if not (path / item).exists():
      raise UserError(f"{path}: not a lima_jax checkpoint (no '{item}/' inside)")


def read_meta(path) -> dict:
  """The JSON metadata of a checkpoint (cheap: reads no arrays)."""
  path = epath.Path(path)
  _check_dir(path, ("meta",))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    return dict(ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def params_metadata(path) -> PyTree:
  """Tree of ShapeDtypeStructs (no sharding) describing the stored parameters."""
  path = epath.Path(path)
  _check_dir(path, ("params",))
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(path / "params").item_metadata.tree
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def save(path, params: PyTree, meta: dict, opt_state: Optional[PyTree] = None) -> None:
  """Writes a checkpoint synchronously (used by conversion; training uses `Manager`)."""
  path = epath.Path(path)
  if path.exists():
    raise UserError(f"{path}: already exists; refusing to overwrite a checkpoint")
  items = {"params": ocp.args.StandardSave(params, save_args=_save_args(params)),
           "meta": ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state, save_args=_save_args(opt_state))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(**items))


def load(path, shardings: Optional[PyTree] = None, dtype=None) -> tuple[PyTree, dict]:
  """Loads (params, meta); `shardings` (a tree matching the params) places them directly;
  `dtype` (e.g. 'bfloat16') casts while reading.

  Without shardings every array lands on the first local device. The stored shapes are checked
  against nothing here: callers compare `meta["model_config"]` with what they expect.
  """
  path = epath.Path(path)
  _check_dir(path, ("params", "meta"))
  target = _abstract(params_metadata(path), shardings, dtype and jax.numpy.dtype(dtype))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(path, ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored.params, dict(restored.meta)


def load_numpy(path) -> tuple[dict, dict]:
  """Loads params as host numpy arrays (for export); returns (params, meta)."""
  params, meta = load(path)
  return jax.tree.map(np.asarray, params), meta


class StoredArray:
  """One stored parameter, read on indexing: `x[i]` reads layer i only (see `_save_args`),
  `np.asarray(x)` reads all of it."""

  def __init__(self, store):
    self._store = store
    self.shape, self.dtype = tuple(store.shape), np.dtype(store.dtype.numpy_dtype)
    self.ndim = len(self.shape)

  def __getitem__(self, index):
    return self._store[index].read().result()

  def __array__(self, dtype=None, copy=None):
    x = self._store.read().result()
    return x if dtype is None else x.astype(dtype)


def _url(path) -> str:
  """A TensorStore kvstore URL for a checkpoint: local paths become file:// URLs."""
  s = os.fspath(path)
  return (s if "://" in s else "file://" + os.path.abspath(s)).rstrip("/") + "/"


def _stored_json(path, key: str):
  """The JSON file `key` of a checkpoint, read through TensorStore wherever it lives."""
  import tensorstore as ts  # orbax's own storage layer
  try:
    r = ts.KvStore.open(_url(path)).result().read(key).result()
  except (ValueError, RuntimeError) as e:
    raise UserError(f"{path}: cannot read ({e})") from None
  if r.state != "value":
    raise UserError(f"{path}: not a lima_jax checkpoint (no {key})")
  return json.loads(bytes(r.value))


def read_stored_meta(path) -> dict:
  """The meta of a checkpoint wherever TensorStore reads it (as `read_stored`, no arrays)."""
  return _stored_json(path, "meta/metadata")


def read_stored(path) -> tuple[dict, PyTree]:
  """(meta, params as `StoredArray`s) through TensorStore alone, so any location it reads works
  (a local path, file://, gs://, s3://) with no epath backend, and reading costs host memory
  for what is indexed, not for the whole tree. Follows the layout `save` and `Manager` write
  (orbax: params/_METADATA, zarr arrays in an OCDBT store, meta/metadata JSON)."""
  import tensorstore as ts  # orbax's own storage layer
  url, meta = _url(path), read_stored_meta(path)
  info = _stored_json(path, "params/_METADATA")
  driver = "zarr3" if info.get("use_zarr3") else "zarr"
  params: dict = {}
  for entry in info["tree_metadata"].values():
    keys = [k["key"] for k in entry["key_metadata"]]
    name = ".".join(keys) + "/"
    kvstore = ({"driver": "ocdbt", "base": url + "params/", "path": name}
               if info.get("use_ocdbt") else url + "params/" + name)
    try:
      store = ts.open({"driver": driver, "kvstore": kvstore}, open=True).result()
    except (ValueError, RuntimeError) as e:
      raise UserError(f"{path}: cannot open params/{name} ({e})") from None
    node = params
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = StoredArray(store)
  return meta, params


def parse_epochs(spec: str, field: str) -> set[int]:
  """'5-10', '5,8,10' -> {5, ..., 10}; '' -> empty (the caller decides what that means)."""
  out = set()
  try:
    for part in filter(None, spec.replace(" ", "").split(",")):
      lo, _, hi = part.partition("-")
      out.update(range(int(lo), int(hi or lo) + 1))
  except ValueError:
    raise UserError(f"{field}={spec}: not like '5-10' or '5,8,10'") from None
  return out


class Manager:
  """Training checkpoints in WORKDIR/checkpoints/<step>/, saved asynchronously.

  Keeps every checkpoint by default: LIMA chooses among epochs 5-10 by reading answers, so
  older epochs are not disposable. `max_to_keep` bounds disk use when that matters more.
  """

  def __init__(self, directory, max_to_keep: Optional[int] = None, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(
        epath.Path(directory), options=options, item_names=("params", "opt_state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return epath.Path(self._mngr.directory) / str(step)

  def save(self, step: int, params: PyTree, opt_state: PyTree, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params, save_args=_save_args(params)),
        opt_state=ocp.args.StandardSave(opt_state, save_args=_save_args(opt_state)),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_params: PyTree,
              abstract_opt_state: PyTree) -> tuple[PyTree, PyTree, dict]:
    """Restores into the shardings carried by the abstract trees (any mesh)."""
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return restored.params, restored.opt_state, dict(restored.meta)

  def delete(self, step: int) -> None:
    self._mngr.delete(step)

  def prune(self, keep_steps: set[int],
              deletable: Optional[Callable[[int], bool]] = None) -> None:
    """Deletes every checkpoint that is neither in `keep_steps` nor the newest complete one
    (which a resume needs), and for which `deletable(step)` holds (training: only its own
    recipe's). Waits for the save in flight first, so the newest is complete."""
    self.wait()
    newest = self.latest_step()
    for step in self.all_steps():
      if step != newest and step not in keep_steps and (deletable is None or deletable(step)):
        self.delete(step)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
