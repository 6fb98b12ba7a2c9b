#!/bin/sh
# Creates the suite's buckets and its MinIO user (the kfops-s3 Secret's keys) with the kfops-readwrite policy,
# which reaches only those buckets. Idempotent: re-running changes nothing that is already in place.
set -eu

alias_name=kfops
tries=0
until mc alias set "$alias_name" "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at $MINIO_ENDPOINT did not accept the root credentials within 5 minutes: is the minio Deployment" \
      "ready, and do MINIO_ROOT_USER/MINIO_ROOT_PASSWORD in Secret kfops-minio-root match the server's?" >&2
    exit 1
  fi
  echo "waiting for MinIO at $MINIO_ENDPOINT ($tries)"
  sleep 5
done

for bucket in $KFOPS_BUCKETS; do
  mc mb --ignore-existing "$alias_name/$bucket"
done

mc admin policy create "$alias_name" kfops-readwrite /config/kfops-readwrite.json
mc admin user add "$alias_name" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
user_info=$(mc admin user info "$alias_name" "$AWS_ACCESS_KEY_ID")
case "$user_info" in
  *kfops-readwrite*) echo "policy kfops-readwrite is already attached to the suite's user" ;;
  *) mc admin policy attach "$alias_name" kfops-readwrite --user "$AWS_ACCESS_KEY_ID" ;;
esac
echo "buckets ready: $KFOPS_BUCKETS"
