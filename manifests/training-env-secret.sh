#!/bin/sh
# Prints Secret kfops-training-env for `| kubectl apply -f -`: the environment of Katib trial pods (envFrom) and
# TrainJob nodes (one secretKeyRef per key) that components/sweep and components/train create at run time. It is
# built from what the namespace already holds after `kubectl apply -k manifests/overlays/<overlay>` and the
# Secrets of manifests/secrets.yaml: every key of ConfigMap kfops-platform (MLFLOW_TRACKING_URI, the S3
# endpoints, AWS_DEFAULT_REGION, ...) and the suite's MinIO user from Secret kfops-s3, so its endpoints follow
# the overlay's namespace and its credentials are the ones the bucket init Job created. Run it again after
# rotating kfops-s3.
#
#   sh manifests/training-env-secret.sh NAMESPACE | kubectl apply -f -
#
# The credentials pass through a pipe only, never a file. KUBECTL overrides the kubectl it runs.
set -eu

namespace=${1:?usage: sh manifests/training-env-secret.sh NAMESPACE | kubectl apply -f -}
kubectl=${KUBECTL:-kubectl}
name=kfops-training-env

if [ -t 1 ]; then
    echo "this prints credentials: pipe it into \`kubectl apply -f -\` instead of a terminal" >&2
    exit 2
fi

umask 077
endpoints=$(mktemp)
trap 'rm -f "$endpoints"' EXIT INT TERM
# The ConfigMap holds no credential; a file lets kubectl read it beside the credentials on stdin.
"$kubectl" -n "$namespace" get configmap kfops-platform \
    -o go-template='{{range $key, $value := .data}}{{$key}}={{$value}}{{"\n"}}{{end}}' > "$endpoints"
# Held in memory, not piped straight on: a failed `get` must stop here (sh has no pipefail).
credentials=$("$kubectl" -n "$namespace" get secret kfops-s3 \
    -o go-template='{{range $key, $value := .data}}{{$key}}={{$value | base64decode}}{{"\n"}}{{end}}')
for key in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    case "$credentials" in
        "$key="?* | *"
$key="?*) ;;
        *) echo "Secret kfops-s3 in namespace $namespace has no $key" >&2; exit 1 ;;
    esac
done

secret=$(printf '%s\n' "$credentials" |
    "$kubectl" -n "$namespace" create secret generic "$name" --dry-run=client -o yaml \
        --from-env-file="$endpoints" --from-env-file=/dev/stdin)
printf '%s\n' "$secret" |
    "$kubectl" label --local -f - -o yaml app.kubernetes.io/part-of=kfops app.kubernetes.io/component=training
