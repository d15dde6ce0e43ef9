#!/usr/bin/env bash
# Prints the Kubernetes manifest of a scaled-out tokenize run: an Indexed Job whose pods are the
# ranks, and a merge Job that waits until every part is finished, merges once and verifies.
# Needs Kubernetes 1.29 or later (backoffLimitPerIndex, on by default from 1.29).
#
#   tools/cluster/k8s-job.sh --ranks 32 --image registry.example.com/mtok:1 \
#       --input /data/train --model /data/mergetok.safetensors --out /cache/train | kubectl apply -f -
#
# The world size is written from --ranks into both `completions` and MTOK_WORLD_SIZE, so the two
# cannot drift apart. Volumes: the claim --data-claim (read-only) at /data holds the dataset and
# the model; the ReadWriteMany claim --cache-claim at /cache holds the cache. The image is built
# from tools/cluster/Dockerfile. A pod that dies is restarted (up to --retries times per index)
# and resumes after its last committed batch; the merge pod only reads the parts' manifests until
# they are all finished, so starting it with the ranks blocks none of them.
# Arguments after `--` go to `mtok tokenize` unchanged (e.g. -- --views center --latent-dtype f16).
set -euo pipefail

name=mtok-tokenize ranks=8 parallelism="" image=mtok:latest
input=/data/train model=/data/mergetok.safetensors out=/cache/train
cpus=16 memory=16Gi retries=4 merge_timeout=86400
data_claim=dataset cache_claim=token-cache
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in --) shift; break ;; -h|--help) usage ;; esac
    [ $# -ge 2 ] || { echo "k8s-job.sh: $1 needs a value" >&2; exit 64; }
    case "$1" in
        --name) name=$2 ;; --ranks) ranks=$2 ;; --parallelism) parallelism=$2 ;; --image) image=$2 ;;
        --input) input=$2 ;; --model) model=$2 ;; --out) out=$2 ;;
        --cpus) cpus=$2 ;; --memory) memory=$2 ;; --retries) retries=$2 ;; --merge-timeout) merge_timeout=$2 ;;
        --data-claim) data_claim=$2 ;; --cache-claim) cache_claim=$2 ;;
        *) echo "k8s-job.sh: unknown option $1" >&2; usage 64 >&2 ;;
    esac
    shift 2
done
for n in ranks cpus retries merge_timeout ${parallelism:+parallelism}; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || { echo "k8s-job.sh: --${n//_/-} must be a positive whole number" >&2; exit 64; }
done
[[ $name =~ ^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$ ]] || { echo "k8s-job.sh: --name must be a DNS label of at most 42 characters" >&2; exit 64; }
for n in data_claim cache_claim; do
    [[ ${!n} =~ ^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$ ]] || { echo "k8s-job.sh: --${n//_/-} must be a claim name (lower-case DNS subdomain)" >&2; exit 64; }
done
[[ $image =~ ^[^[:space:]\"]+$ ]] || { echo "k8s-job.sh: --image must be an image reference without spaces or quotes" >&2; exit 64; }
[[ $memory =~ ^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$ ]] || { echo "k8s-job.sh: --memory must be a quantity such as 16Gi" >&2; exit 64; }

# YAML flow-sequence items, JSON-quoted (a JSON string is a YAML string).
quote() { python3 -c 'import json, sys; print(", ".join(json.dumps(a) for a in sys.argv[1:]))' "$@"; }
tokenize=$(quote mtok tokenize "$input" --model "$model" --out "$out" --threads "$cpus" "$@")
merge=$(quote sh -c "mtok merge \"\$0\" --wait --timeout $merge_timeout --poll 30 && exec mtok verify \"\$0\"" "$out")

cat <<EOF
# Rendered by tools/cluster/k8s-job.sh; Kubernetes 1.29 or later.
apiVersion: batch/v1
kind: Job
metadata:
  name: $name
  labels: {app.kubernetes.io/name: mtok}
spec:
  completionMode: Indexed
  completions: $ranks
  parallelism: ${parallelism:-$ranks}
  backoffLimitPerIndex: $retries
  template:
    metadata:
      labels: {app.kubernetes.io/name: mtok}
    spec:
      restartPolicy: Never
      containers:
        - name: tokenize
          image: "$image"
          command: [$tokenize]
          env:
            - {name: MTOK_WORLD_SIZE, value: "$ranks"}
          resources:
            requests: {cpu: "$cpus", memory: "$memory"}
            limits: {cpu: "$cpus", memory: "$memory"}
          volumeMounts:
            - {name: data, mountPath: /data, readOnly: true}
            - {name: cache, mountPath: /cache}
      volumes:
        - name: data
          persistentVolumeClaim: {claimName: "$data_claim", readOnly: true}
        - name: cache
          persistentVolumeClaim: {claimName: "$cache_claim"}
---
# Starts with the ranks and waits (mtok merge --wait) until every part is finished.
apiVersion: batch/v1
kind: Job
metadata:
  name: $name-merge
  labels: {app.kubernetes.io/name: mtok}
spec:
  backoffLimit: 3
  template:
    metadata:
      labels: {app.kubernetes.io/name: mtok}
    spec:
      restartPolicy: OnFailure
      containers:
        - name: merge
          image: "$image"
          command: [$merge]
          resources:
            requests: {cpu: "1", memory: 1Gi}
          volumeMounts:
            - {name: cache, mountPath: /cache}
      volumes:
        - name: cache
          persistentVolumeClaim: {claimName: "$cache_claim"}
EOF
