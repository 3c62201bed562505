#!/usr/bin/env bash
# Creates, sets up, trains on and deletes Cloud TPU VMs for lima_jax. Run with --help.
set -euo pipefail

# uv provides the venv's Python on the workers (their images ship 3.10; jax 0.10 needs 3.11+).
readonly UV_VERSION=0.13.8

usage_line() {
  echo "usage: launch/tpu.sh [flags] {create|setup|train|logs|ssh|stop|delete} [-- args]" \
    "(--help for details)"
}

print_help() {
  cat <<'EOF'
launch/tpu.sh: Cloud TPU VMs for lima_jax, from creation to deletion.

usage: launch/tpu.sh [flags] SUBCOMMAND [flags] [-- args]

Subcommands
  create    Create the TPU VM (or a queued resource with --queued).
  setup     On every worker: copy the code at a git commit (git archive of --commit, or a
            clone of --repo-url at --commit), make a Python venv and install
            requirements-tpu.txt (requirements.txt + jax[tpu] + libtpu + gcsfs).
  train     On every worker at once: start
              python -m lima_jax.main --config=CONFIG --workdir=WORKDIR [args after --]
            detached (setsid nohup: an ssh drop does not stop it). Each worker appends to
            ~/REMOTE_DIR_logs/train.log; with a gs:// workdir the log is also copied every
            minute to WORKDIR/logs/<worker hostname>.log.
  logs      Follow the training log of --worker (default 0).
  ssh       Open a shell on --worker; with args after --, run them there (--worker=all: on
            every worker).
  stop      Stop the run on every worker (SIGTERM, then SIGKILL after STOP_GRACE seconds).
  delete    Delete the TPU VM (the queued resource with --queued). gcloud asks to confirm.

Flags (each may also be set by the environment variable in brackets)
  --name=NAME              [TPU_NAME]          TPU VM name. Required.
  --zone=ZONE              [ZONE]              Zone, e.g. us-central2-b (v4), us-east5-a (v5p),
                                               us-west4-a (v5e), us-east1-d (v6e). Required.
  --project=PROJECT        [PROJECT]           Default: gcloud's configured project.
  --accelerator-type=TYPE  [ACCELERATOR_TYPE]  Default: v4-8. v4-N/v5p-N count TensorCores
                                               (2 per chip); v5litepod-N/v6e-N count chips.
  --runtime-version=V      [RUNTIME_VERSION]   TPU software version. Default by type:
                                               tpu-ubuntu2204-base (v4), v2-alpha-tpuv5 (v5p),
                                               v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e).
  --spot                   [SPOT=1]            create: Spot VM (cheaper, can be preempted).
  --preemptible            [PREEMPTIBLE=1]     create: preemptible VM (older variant of spot;
                                               not with --queued).
  --queued                 [QUEUED=1]          create/delete: a queued resource (waits for
                                               capacity) instead of a TPU VM.
  --commit=SHA             [COMMIT]            setup: commit to install. Default: HEAD.
                                               Uncommitted changes are never copied.
  --repo-url=URL           [REPO_URL]          setup: clone URL at --commit on the workers
                                               instead of copying a git archive from here.
  --remote-dir=DIR         [REMOTE_DIR]        Code directory on the workers, relative to the
                                               home directory. Default: lima_jax (venv in
                                               DIR_venv, logs in DIR_logs).
  --python=VERSION         [PYTHON_VERSION]    setup: Python of the venv. Default: 3.11.
  --config=CONFIG          [CONFIG]            train: configs/FILE.py[:VARIANT]. Required.
  --workdir=DIR            [WORKDIR]           train: gs://BUCKET/PATH (or a path on each
                                               worker). Required.
  --worker=N|all           [WORKER]            logs/ssh: which worker. Default: 0.
  --dry-run                [DRY_RUN=1]         Print every command that changes something
                                               (gcloud, git archive) instead of running it.
  -h, --help                                   This help.
  Also from the environment: STOP_GRACE, seconds between SIGTERM and SIGKILL in stop
  (default 300: training saves a checkpoint on SIGTERM).

Worker side (run on each TPU VM by the subcommands above, from the installed code):
  worker-install --staging=DIR --python=V   move the new code in place, make the venv, install
  worker-train --config=C --workdir=W -- ARGS   start worker-run detached
  worker-run --config=C --workdir=W -- ARGS     run training, log, copy the log to gs://
  worker-stop --grace=SECONDS                   stop the run of this worker
  (all take --remote-dir)

Arguments after -- go to python -m lima_jax.main for train, each quoted as given, e.g.
  launch/tpu.sh --name=lima --zone=us-central2-b --accelerator-type=v4-256 \
    --config=configs/lima.py:65b --workdir=gs://BUCKET/lima65b train -- \
    --config.model.init=gs://BUCKET/llama-65b --config.data.train_files='a b.jsonl'

Plan memory and speed before creating anything:
  python -m lima_jax.plan --config=configs/lima.py:65b --topology=v4-256
EOF
}

die() {  # A usage error: one line, exit 2.
  echo "tpu.sh: error: $* ($(usage_line))" >&2
  exit 2
}

# Prints a command so that a shell reads it back as the same words: plain words as they are,
# others in single quotes (each ' as '\''), which keeps any byte, newlines included.
show() {
  local out="" arg quote="'\\''"
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/${quote}}' "
    fi
  done
  echo "${out% }"
}

# Runs a command that changes something, or only prints it under --dry-run.
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    show "$@"
  else
    "$@"
  fi
}

default_runtime_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --runtime-version for accelerator type '$1'; give one" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Local side: gcloud commands. (Portable to macOS's bash 3.2: no namerefs, no empty "${a[@]}".)
# ---------------------------------------------------------------------------------------------

# Runs a shell command line ($2) on TPU workers ($1: an index or 'all').
on_workers() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${COMMON[@]}" "--worker=$1" "--command=$2"
}

# The command line that runs a worker-side subcommand ($2) of this script from the copy of the
# code in directory $1 on the worker.
worker_command() {
  local code=$1 subcommand=$2
  shift 2
  show bash "${code}/launch/tpu.sh" "${subcommand}" "--remote-dir=${REMOTE_DIR}" "$@"
}

cmd_create() {
  local capacity=()
  if [[ "${SPOT}" == 1 ]]; then capacity=(--spot); fi
  if [[ "${PREEMPTIBLE}" == 1 ]]; then capacity=(--preemptible); fi
  if [[ "${QUEUED}" == 1 ]]; then
    run gcloud compute tpus queued-resources create "${TPU_NAME}" "--node-id=${TPU_NAME}" \
      "${COMMON[@]}" "--accelerator-type=${ACCELERATOR_TYPE}" \
      "--runtime-version=${RUNTIME_VERSION}" ${capacity[@]+"${capacity[@]}"}
  else
    run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${COMMON[@]}" \
      "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}" \
      ${capacity[@]+"${capacity[@]}"}
  fi
}

cmd_setup() {
  local repo_root sha staging install
  repo_root="$(cd "${SCRIPT_DIR}/.." && pwd)"
  staging="${REMOTE_DIR}.new"
  install="$(worker_command "${staging}" worker-install "--python=${PYTHON_VERSION}" \
    "--staging=${staging}")"
  if [[ -n "${REPO_URL}" ]]; then
    sha="${COMMIT}"
    if [[ -z "${sha}" ]]; then
      sha="$(git -C "${repo_root}" rev-parse HEAD 2>/dev/null)" \
        || die "--repo-url needs --commit (there is no git checkout here to take HEAD from)"
    fi
    on_workers all "rm -rf $(show "${staging}") && git clone --quiet $(show "${REPO_URL}") \
$(show "${staging}") && git -C $(show "${staging}") checkout --quiet --detach $(show "${sha}") \
&& ${install}"
    return
  fi
  sha="$(git -C "${repo_root}" rev-parse --verify --quiet "${COMMIT:-HEAD}^{commit}")" \
    || die "--commit=${COMMIT:-HEAD} is not a commit of ${repo_root}"
  if [[ -z "${COMMIT}" && -n "$(git -C "${repo_root}" status --porcelain 2>/dev/null)" ]]; then
    echo "tpu.sh: warning: uncommitted changes are not copied; installing commit ${sha}" >&2
  fi
  local tarball="lima_jax-${sha}.tar.gz" tmpdir
  tmpdir="$(mktemp -d)"
  # shellcheck disable=SC2064  # Expand now: tmpdir is local.
  trap "rm -rf '${tmpdir}'" EXIT
  run git -C "${repo_root}" archive --format=tar.gz -o "${tmpdir}/${tarball}" "${sha}"
  run gcloud compute tpus tpu-vm scp "${tmpdir}/${tarball}" "${TPU_NAME}:${tarball}" \
    "${COMMON[@]}" --worker=all
  on_workers all "rm -rf $(show "${staging}") && mkdir -p $(show "${staging}") && tar -xzf \
$(show "${tarball}") -C $(show "${staging}") && rm -f $(show "${tarball}") && echo ${sha} > \
$(show "${staging}/COMMIT") && ${install}"
}

cmd_train() {
  on_workers all "$(worker_command "${REMOTE_DIR}" worker-train "--config=${CONFIG}" \
    "--workdir=${WORKDIR}" -- "$@")"
}

cmd_logs() {
  on_workers "${WORKER}" "tail -n 200 -F $(show "${REMOTE_DIR}_logs/train.log")"
}

cmd_ssh() {
  if (($# == 0)); then
    run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${COMMON[@]}" "--worker=${WORKER}"
  else
    on_workers "${WORKER}" "$(show "$@")"
  fi
}

cmd_stop() {
  on_workers all "$(worker_command "${REMOTE_DIR}" worker-stop "--grace=${STOP_GRACE}")"
}

cmd_delete() {
  if [[ "${QUEUED}" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "${TPU_NAME}" "${COMMON[@]}" --force
  else
    run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${COMMON[@]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# Worker side: run on each TPU VM (by the commands above) from the code that setup installed,
# so the remote logic is plain bash here rather than strings quoted twice.
# ---------------------------------------------------------------------------------------------

abs_remote() {  # Worker paths are relative to the home directory, as over ssh.
  if [[ "$1" == /* ]]; then echo "$1"; else echo "${HOME}/$1"; fi
}

running_pgid() {  # The process group of the current run, if one is alive.
  local pidfile="$1/train.pid" pgid
  [[ -f "${pidfile}" ]] || return 1
  pgid="$(<"${pidfile}")"
  [[ "${pgid}" =~ ^[0-9]+$ ]] && kill -0 -- "-${pgid}" 2>/dev/null && echo "${pgid}"
}

worker_install() {
  local code logs venv staging
  code="$(abs_remote "${REMOTE_DIR}")"
  logs="${code}_logs"
  venv="${code}_venv"
  staging="$(abs_remote "${STAGING}")"
  if running_pgid "${logs}" >/dev/null; then
    echo "$(hostname): a run is going on (stop it first: launch/tpu.sh stop)" >&2
    exit 1
  fi
  rm -rf "${code}"
  mv "${staging}" "${code}"
  python3 -m pip install --user --quiet "uv==${UV_VERSION}"
  if [[ ! -x "${venv}/bin/python" ]]; then
    python3 -m uv venv --quiet --python "${PYTHON_VERSION}" "${venv}"
  fi
  python3 -m uv pip install --quiet --python "${venv}/bin/python" \
    -r "${code}/requirements-tpu.txt"
  echo "$(hostname): lima_jax $(cat "${code}/COMMIT" 2>/dev/null || git -C "${code}" \
    rev-parse HEAD) installed; $("${venv}/bin/python" -c \
    'import jax, libtpu; print("jax", jax.__version__, "libtpu", libtpu.__version__)')"
}

worker_train() {
  local code logs
  code="$(abs_remote "${REMOTE_DIR}")"
  logs="${code}_logs"
  if [[ ! -x "${code}_venv/bin/python" ]]; then
    echo "$(hostname): ${code}_venv/bin/python not found: run launch/tpu.sh setup first" >&2
    exit 1
  fi
  mkdir -p "${logs}"
  if running_pgid "${logs}" >/dev/null; then
    echo "$(hostname): a run is already going on; see ${logs}/train.log" >&2
    exit 1
  fi
  # A new session: its process group outlives ssh and is what `stop` kills.
  setsid nohup bash "${SELF}" worker-run "--remote-dir=${REMOTE_DIR}" "--config=${CONFIG}" \
    "--workdir=${WORKDIR}" -- ${1+"$@"} </dev/null >/dev/null 2>&1 &
  echo "$(hostname): started; log ${logs}/train.log"
}

worker_run() {
  local code logs log copy_to="" pid rc=0
  code="$(abs_remote "${REMOTE_DIR}")"
  logs="${code}_logs"
  log="${logs}/train.log"
  echo "$$" >"${logs}/train.pid"
  if [[ "${WORKDIR}" == gs://* ]]; then copy_to="${WORKDIR%/}/logs/$(hostname).log"; fi
  local cmd=("${code}_venv/bin/python" -m lima_jax.main "--config=${CONFIG}"
    "--workdir=${WORKDIR}" ${1+"$@"})
  {
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) lima_jax $(cat "${code}/COMMIT" \
      2>/dev/null || true)"
    echo "+ $(show "${cmd[@]}")"
  } >>"${log}"
  cd "${code}"
  PYTHONUNBUFFERED=1 "${cmd[@]}" >>"${log}" 2>&1 &
  pid=$!
  # `stop` signals the whole group; outlive python (which may checkpoint on SIGTERM) to log
  # its exit status. A handler, not '' (ignored), so that nothing started later ignores it.
  trap 'true' TERM INT HUP
  local copier=""
  if [[ -n "${copy_to}" ]]; then
    if command -v gcloud >/dev/null; then
      (
        nap=""
        trap 'kill "${nap}" 2>/dev/null; exit 0' TERM
        while kill -0 "${pid}" 2>/dev/null; do
          sleep 60 &
          nap=$!
          wait "${nap}" || true
          gcloud storage cp --quiet "${log}" "${copy_to}" >/dev/null 2>&1 || true
        done
      ) &
      copier=$!
    else
      echo "=== gcloud not found: the log stays on this worker" >>"${log}"
    fi
  fi
  while true; do
    rc=0
    wait "${pid}" || rc=$?
    kill -0 "${pid}" 2>/dev/null || break  # Else wait was cut short by a signal.
  done
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) exit ${rc}" >>"${log}"
  if [[ -n "${copier}" ]]; then
    kill -TERM "${copier}" 2>/dev/null || true
    wait "${copier}" 2>/dev/null || true
    gcloud storage cp --quiet "${log}" "${copy_to}" >/dev/null 2>&1 || true
  fi
  rm -f "${logs}/train.pid"
  return "${rc}"
}

worker_stop() {
  local logs pgid
  logs="$(abs_remote "${REMOTE_DIR}")_logs"
  if ! pgid="$(running_pgid "${logs}")"; then
    echo "$(hostname): no run going on"
    return 0
  fi
  kill -TERM -- "-${pgid}" 2>/dev/null || true
  local i
  for ((i = 0; i < GRACE; i++)); do
    kill -0 -- "-${pgid}" 2>/dev/null || break
    sleep 1
  done
  if kill -0 -- "-${pgid}" 2>/dev/null; then
    kill -KILL -- "-${pgid}" 2>/dev/null || true
    echo "$(hostname): killed (no exit after ${GRACE} s)"
  else
    echo "$(hostname): stopped"
  fi
  rm -f "${logs}/train.pid"
}

# ---------------------------------------------------------------------------------------------
# Flags.
# ---------------------------------------------------------------------------------------------

case "${BASH_SOURCE[0]}" in
  */*) SCRIPT_DIR="$(cd "${BASH_SOURCE[0]%/*}" && pwd)" ;;
  *) SCRIPT_DIR="$(pwd)" ;;
esac
SELF="${SCRIPT_DIR}/${BASH_SOURCE[0]##*/}"
TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
QUEUED="${QUEUED:-0}"
COMMIT="${COMMIT:-}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-lima_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
WORKER="${WORKER:-0}"
DRY_RUN="${DRY_RUN:-0}"
STOP_GRACE="${STOP_GRACE:-300}"
STAGING=""  # worker-install: where setup put the new code.
GRACE="${STOP_GRACE}"  # worker-stop: seconds between SIGTERM and SIGKILL.

subcommand=""
rest=()
while (($#)); do
  arg=$1
  shift
  case "${arg}" in
    -h | --help) print_help; exit 0 ;;
    --) rest=("$@"); break ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --queued) QUEUED=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --*=*)
      value="${arg#*=}"
      case "${arg%%=*}" in
        --name) TPU_NAME=${value} ;;
        --zone) ZONE=${value} ;;
        --project) PROJECT=${value} ;;
        --accelerator-type) ACCELERATOR_TYPE=${value} ;;
        --runtime-version) RUNTIME_VERSION=${value} ;;
        --commit) COMMIT=${value} ;;
        --repo-url) REPO_URL=${value} ;;
        --remote-dir) REMOTE_DIR=${value} ;;
        --python) PYTHON_VERSION=${value} ;;
        --config) CONFIG=${value} ;;
        --workdir) WORKDIR=${value} ;;
        --worker) WORKER=${value} ;;
        --staging) STAGING=${value} ;;
        --grace) GRACE=${value} ;;
        *) die "unknown flag ${arg%%=*}" ;;
      esac
      ;;
    --name | --zone | --project | --accelerator-type | --runtime-version | --commit | \
      --repo-url | --remote-dir | --python | --config | --workdir | --worker)
      (($#)) || die "${arg} needs a value"
      set -- "${arg}=$1" "${@:2}"
      ;;
    -*) die "unknown flag ${arg}" ;;
    *)
      [[ -z "${subcommand}" ]] || die "unexpected argument '${arg}' (arguments for train go after --)"
      subcommand=${arg}
      ;;
  esac
done

case "${subcommand}" in
  worker-install) worker_install; exit ;;
  worker-train) worker_train ${rest[@]+"${rest[@]}"}; exit ;;
  worker-run) worker_run ${rest[@]+"${rest[@]}"}; exit ;;
  worker-stop) worker_stop; exit ;;
  create | setup | train | logs | ssh | stop | delete) ;;
  "") die "no subcommand" ;;
  *) die "unknown subcommand '${subcommand}'" ;;
esac

[[ -n "${TPU_NAME}" ]] || die "--name (or TPU_NAME) is required"
[[ -n "${ZONE}" ]] || die "--zone (or ZONE) is required"
[[ "${WORKER}" =~ ^([0-9]+|all)$ ]] || die "--worker must be a number or 'all', not '${WORKER}'"
[[ "${STOP_GRACE}" =~ ^[0-9]+$ ]] || die "STOP_GRACE must be a number of seconds"
if [[ "${SPOT}" == 1 && "${PREEMPTIBLE}" == 1 ]]; then
  die "--spot and --preemptible exclude each other"
fi
if [[ "${QUEUED}" == 1 && "${PREEMPTIBLE}" == 1 ]]; then
  die "--queued takes --spot, not --preemptible"
fi
if [[ "${subcommand}" == train ]]; then
  [[ -n "${CONFIG}" ]] || die "train needs --config (or CONFIG), e.g. configs/lima.py:65b"
  [[ -n "${WORKDIR}" ]] || die "train needs --workdir (or WORKDIR), e.g. gs://BUCKET/run"
elif ((${#rest[@]})) && [[ "${subcommand}" != ssh ]]; then
  die "${subcommand} takes no arguments after --"
fi
if [[ -z "${RUNTIME_VERSION}" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "${ACCELERATOR_TYPE}")"
fi
if [[ "${DRY_RUN}" != 1 ]] && ! command -v gcloud >/dev/null; then
  die "gcloud not found: install the Google Cloud SDK (or see the commands with --dry-run)"
fi
COMMON=("--zone=${ZONE}")
if [[ -n "${PROJECT}" ]]; then COMMON+=("--project=${PROJECT}"); fi
"cmd_${subcommand}" ${rest[@]+"${rest[@]}"}
