#!/usr/bin/env bash
# End-to-end check of tools/cluster/tokenize.slurm on a real one-node Slurm cluster started here
# from Debian's packages (munge, slurmctld, slurmd on loopback; `tools/install-deps.sh --slurm`
# installs them). Submits the script unmodified, as the README says, as 4 ranks over real photos
# with the tiny model; SIGKILLs one task's mtok mid-run and requeues it with `scontrol requeue`;
# then checks that the merge job ran once, and that the merged cache verifies deep and has the
# same content digest as a single-machine run. Must run as root (slurmd does).
#
#   tools/cluster/slurm-e2e.sh [MTOK]     # MTOK: the mtok binary (default .build/debug/mtok)
#
# Exit 0: passed. Exit 77: this machine cannot run Slurm (the reason is printed). Else: failed.
# Everything lives in a temporary directory, removed at the end with the daemons stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MTOK=$(readlink -f "${1:-.build/debug/mtok}")

skip() { echo "slurm-e2e: skipped: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "slurmd must run as root"
for p in munged slurmctld slurmd sbatch scontrol squeue; do
    command -v "$p" >/dev/null || skip "$p is not installed (tools/install-deps.sh --slurm)"
done
[ -x "$MTOK" ] || { echo "slurm-e2e: no mtok at $MTOK" >&2; exit 1; }

W=$(mktemp -d /tmp/mtok-slurm.XXXXXX)
chmod 755 "$W"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
log() { echo "slurm-e2e: [${SECONDS}s] $*"; }
fail() {
    echo "slurm-e2e: FAILED: $*" >&2
    for f in "$W"/*.log "$W"/jobs/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    exit 1
}

# --- munge, with its own key and socket (no system service touched)
mkdir -p "$W/munge" && chmod 700 "$W/munge"
head -c 1024 /dev/urandom > "$W/munge/munge.key" && chmod 400 "$W/munge/munge.key"
munged --foreground --force --socket="$W/munge/socket" --key-file="$W/munge/munge.key" \
    --pid-file="$W/munge/munged.pid" --log-file="$W/munged.log" --seed-file="$W/munge/seed" >>"$W/munged.log" 2>&1 &
pids+=($!)

# --- slurm.conf for one node on loopback; ports picked from the process id to avoid clashes
HOST=$(hostname -s)
CPUS=$(nproc)
PORT=$((20000 + ($$ % 5000) * 2))
mkdir -p "$W/state" "$W/spool" "$W/jobs"
export SLURM_CONF="$W/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=mtoke2e
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
# A requeued job waits out the credential lifetime (cred_expire, 120 s by default) before it
# starts again; 10 s keeps the test short.
AuthInfo=socket=$W/munge/socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
for _ in $(seq 50); do [ -S "$W/munge/socket" ] && break; sleep 0.1; done
[ -S "$W/munge/socket" ] || skip "munged did not start: $(tail -n 3 "$W/munged.log" 2>/dev/null)"
slurmctld -D -i -f "$SLURM_CONF" >>"$W/slurmctld.log" 2>&1 &
pids+=($!)
sleep 1
slurmd -D -f "$SLURM_CONF" -N "$HOST" >>"$W/slurmd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
    [ "$state" = idle ] && break
    sleep 0.2
done
[ "$state" = idle ] || skip "the Slurm node did not come up (state '${state:-none}'): $(tail -n 3 "$W/slurmd.log" "$W/slurmctld.log" 2>/dev/null)"
log "Slurm $(sinfo -V | awk '{print $2}') up: node $HOST, $CPUS CPUs"

# --- a dataset of real photos (the demo ImageFolder, 16 copies of each) and the tiny model
for cls in "$ROOT"/tools/demo/images/*/; do
    c=$(basename "$cls"); mkdir -p "$W/data/$c"
    for f in "$cls"*; do for i in $(seq 16); do cp "$f" "$W/data/$c/${i}_$(basename "$f")"; done; done
done
"$MTOK" model init --preset tiny --seed 3 --out "$W/tiny.safetensors" >/dev/null
OPTS=(--views center,hflip --batch-size 1)
"$MTOK" tokenize "$W/data" --model "$W/tiny.safetensors" --out "$W/single" "${OPTS[@]}" --threads 1 >"$W/single.log" 2>&1 \
    || fail "the single-machine run failed"
single=$("$MTOK" info "$W/single" | awk '/content digest/ {print $NF}')
log "single machine: content digest $single"

# --- submit as the README says: the array, then the merge job that depends on it
cd "$W/jobs"
export MTOK
job=$(sbatch --parsable --array=0-3 --cpus-per-task=1 "$ROOT/tools/cluster/tokenize.slurm" \
    "$W/data" "$W/tiny.safetensors" "$W/cache" "${OPTS[@]}")
merge=$(sbatch --parsable --dependency=afterany:"$job" --job-name=mtok-merge --output=mtok-merge-%j.log \
    "$ROOT/tools/cluster/tokenize.slurm" --merge "$W/cache")
log "submitted array job $job (4 tasks) and merge job $merge"

# --- SIGKILL task 1's mtok once it has committed part of its share
victim=""
for _ in $(seq 600); do
    for pid in $(pgrep -f "tokenize $W/data" || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx SLURM_ARRAY_TASK_ID=1; then
            done_=$(python3 - "$W/cache/parts/rank-00001/manifest.json" <<'PY' 2>/dev/null || echo 0
import json, sys
m = json.load(open(sys.argv[1]))
print(1 if m["totals"]["records"] > 0 and not m["complete"] else 0)
PY
)
            [ "$done_" = 1 ] && { victim=$pid; break 2; }
        fi
    done
    sleep 0.05
done
[ -n "$victim" ] || fail "never saw task 1 mid-run"
kill -9 "$victim" || fail "task 1 finished before it could be killed (make the dataset larger)"
log "SIGKILLed task 1's mtok (pid $victim) after it committed part of its share"

jobstate() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }
for _ in $(seq 300); do
    s=$(jobstate "${job}_1"); [ "$s" = FAILED ] && break; sleep 0.2
done
[ "$s" = FAILED ] || fail "task 1 is $s after SIGKILL, expected FAILED"
# The hard order: the failure is noticed late. Every other task has ended, so the merge job
# starts (afterany) and must wait for rank 1 instead of failing or merging without it.
for _ in $(seq 1800); do
    [ "$(jobstate "$merge")" = RUNNING ] && grep -qs "waiting: .*unfinished: rank 1" "$W"/jobs/*"$merge"*.log && break
    sleep 0.2
done
grep -qs "waiting: .*unfinished: rank 1" "$W"/jobs/*"$merge"*.log || fail "the merge job did not start waiting for rank 1"
log "merge job $merge started and waits: $(grep -ho 'waiting: .*' "$W"/jobs/*"$merge"*.log | tail -n 1)"
scontrol requeue "${job}_1"
log "requeued ${job}_1 (scontrol requeue)"

for _ in $(seq 1800); do
    s=$(jobstate "$merge")
    case "$s" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.2
done
[ "$s" = COMPLETED ] || fail "merge job $merge ended $s"
for t in 0 1 2 3; do
    s=$(jobstate "${job}_$t"); [ "$s" = COMPLETED ] || fail "task $t ended $s"
done
restarts=$(scontrol show job "${job}_1" -o | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
[ "$restarts" -ge 1 ] || fail "task 1 shows no restart"
merges=$(grep -h "^merged " "$W"/jobs/*.log | wc -l)
[ "$merges" = 1 ] || fail "$merges merges ran, expected exactly one"
log "every task COMPLETED (task 1 after $restarts restart), merge job COMPLETED, one merge: $(grep -h '^merged ' "$W"/jobs/*.log)"

before=$(grep -o '([0-9]* done before)' "$W/jobs/mtok-tokenize-${job}_1.log" | tr -dc 0-9)
[ "${before:-0}" -gt 0 ] || fail "requeued task 1 did not resume from its committed batches"
log "requeued task 1 resumed: $before images were done before the kill"
"$MTOK" verify "$W/cache" --deep >/dev/null || fail "the merged cache does not verify deep"
merged=$("$MTOK" info "$W/cache" | awk '/content digest/ {print $NF}')
log "merged: content digest $merged"
[ "$merged" = "$single" ] || fail "merged digest $merged differs from the single-machine $single"
log "passed: merged cache verifies deep and equals the single-machine run"
