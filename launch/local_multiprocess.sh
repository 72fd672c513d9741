#!/usr/bin/env bash
# N CPU processes of mi_contrast.main on this machine, talking over localhost: the multi-host
# code path (jax.distributed, one global mesh, collective checkpoints) without a pod.
#
#   launch/local_multiprocess.sh --num_processes=2 --devices_per_process=4 -- \
#       --config=configs/ring.py --workdir=/tmp/mi_ring_2x4
#
# Options (before --):
#   --num_processes=N        processes to start (default 2)
#   --devices_per_process=M  simulated CPU devices per process (default 4)
#   --port=P                 coordinator port on localhost (default: a free port)
#   --python=PATH            interpreter (default: $PYTHON or python)
#   --log_dir=DIR            also keep each process's output in DIR/process_<i>.log
#   --kill_after=S           after a failure, SIGKILL the processes still running S seconds
#                            after their SIGTERM (default 20: with a peer gone, their
#                            collectives cannot finish)
# Everything after -- goes to `python -m mi_contrast.main` unchanged.
#
# Waits for every process. Exits 0 only if all of them exit 0; when one fails, the others are
# stopped and the script exits with the failing process's status. SIGTERM to the script is
# passed to every process (each writes a checkpoint at the same step and exits 0).
set -u

num_processes=2
devices_per_process=4
port=""
python_bin="${PYTHON:-python}"
log_dir=""
kill_after=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --python=*) python_bin="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --kill_after=*) kill_after="${1#*=}" ;;
    --) shift; break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "local_multiprocess.sh: unknown option $1 (main's arguments go after --)" >&2
       exit 2 ;;
  esac
  shift
done
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$devices_per_process" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: --num_processes and --devices_per_process must be positive" \
       "integers (got $num_processes, $devices_per_process)" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi
[[ -n "$log_dir" ]] && mkdir -p "$log_dir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
}
# SIGTERM / SIGINT to the launcher go to every process (which checkpoint and exit 0 on
# SIGTERM); the launcher keeps waiting for them and reports their status.
trap 'stop_all' TERM INT

for ((i = 0; i < num_processes; i++)); do
  (
    export JAX_PLATFORMS=cpu
    # This launcher sets the device count: drop any inherited one.
    flags_in=()
    for flag in ${XLA_FLAGS:-}; do
      [[ "$flag" == --xla_force_host_platform_device_count=* ]] || flags_in+=("$flag")
    done
    export XLA_FLAGS="${flags_in[*]+${flags_in[*]}} --xla_force_host_platform_device_count=${devices_per_process}"
    cmd=("$python_bin" -m mi_contrast.main --coordinator_address="localhost:${port}"
         --num_processes="$num_processes" --process_id="$i" "$@")
    if [[ -n "$log_dir" ]]; then
      exec "${cmd[@]}" > >(tee "$log_dir/process_$i.log") 2>&1
    else
      exec "${cmd[@]}"
    fi
  ) &
  pids+=("$!")
done

status=0
killer=""
live=("${pids[@]}")
while [[ ${#live[@]} -gt 0 ]]; do
  finished=""
  wait -n -p finished "${live[@]}"
  code=$?
  if [[ -z "${finished:-}" ]]; then
    # Either a trapped signal interrupted the wait, or bash had already collected a process
    # that exited together with the previous one, and `wait -n` answers "no such job" (127)
    # for it. Plain `wait PID` still returns the status bash kept for it.
    for pid in "${live[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"
        code=$?
        finished=$pid
        break
      fi
    done
    if [[ -z "${finished:-}" ]]; then
      sleep 0.1  # all still running (or not yet collected): wait again, without spinning
      continue
    fi
  fi
  rest=()
  for pid in "${live[@]}"; do [[ "$pid" != "$finished" ]] && rest+=("$pid"); done
  live=("${rest[@]+"${rest[@]}"}")
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    echo "local_multiprocess.sh: process pid $finished exited with status $code;" \
         "stopping the others" >&2
    pids=("${live[@]+"${live[@]}"}")
    stop_all
    if [[ ${#pids[@]} -gt 0 ]]; then
      ( sleep "$kill_after"; for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
      ) >/dev/null 2>&1 &
      killer=$!
    fi
  fi
done
[[ -n "$killer" ]] && kill "$killer" 2>/dev/null
exit "$status"
