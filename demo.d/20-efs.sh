# shellcheck shell=bash
# Demo part: the seed's EFS set-up against moto. Sourced by ./demo with the
# control plane up and KUBECONFIG exported; `./demo down` calls efs_down.
# Starts a private moto, runs the efs-provisioner binary in the background
# configured with the seed's environment, applies the seed's classes and
# claims, and shows `kubectl get pvc` once both are Bound.

EFS_DEMO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EFS_DEMO_STATE="${EFS_DEMO_STATE:-${TMPDIR:-/tmp}/efs-demo}"
EFS_DEMO_REGION="ap-southeast-2"   # the seed's region; moto has a default VPC there too

efs_kubectl() {
  "${KUBECTL:-$("$EFS_DEMO_ROOT/tests/controlplane/build")/kubectl}" "$@"
}

efs_ec2() {  # efs_ec2 <query string>: moto's EC2 API, region from the credential scope
  curl -sf -X POST "$AWS_ENDPOINT_URL_EFS/" \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/$EFS_DEMO_REGION/ec2/aws4_request, SignedHeaders=host, Signature=0" \
    -d "Version=2016-11-15&$1"
}

efs_up() {
  mkdir -p "$EFS_DEMO_STATE"
  echo "== efs: moto"
  eval "$(MOTO_STATE_DIR="$EFS_DEMO_STATE/moto" "$EFS_DEMO_ROOT/tests/moto/up")" || return 1
  local subnets sg
  subnets="$(efs_ec2 'Action=DescribeSubnets&Filter.1.Name=default-for-az&Filter.1.Value.1=true' \
    | grep -o '<subnetId>[^<]*' | cut -d'>' -f2 | paste -sd, -)"
  sg="$(efs_ec2 'Action=DescribeSecurityGroups&Filter.1.Name=group-name&Filter.1.Value.1=default' \
    | grep -o '<groupId>[^<]*' | head -n1 | cut -d'>' -f2)"
  echo "== efs: building efs-provisioner"
  (cd "$EFS_DEMO_ROOT" && cargo build -q -p efs-provisioner --bin efs-provisioner) || return 1
  echo "== efs: efs-provisioner (both seed names, seed environment), log in $EFS_DEMO_STATE/provisioner.log"
  EFS_PERFORMANCE=generalPurpose AWS_REGION="$EFS_DEMO_REGION" AWS_SECURITY_GROUP="$sg" AWS_SUBNETS="$subnets" \
  AWS_ENDPOINT_URL_EFS="$AWS_ENDPOINT_URL_EFS" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_EC2_METADATA_DISABLED=true PROVISIONER_METRICS_ADDRESS="" \
    setsid "${CARGO_TARGET_DIR:-$EFS_DEMO_ROOT/target}/debug/efs-provisioner" >"$EFS_DEMO_STATE/provisioner.log" 2>&1 </dev/null &
  echo $! >"$EFS_DEMO_STATE/provisioner.pid"
  efs_kubectl create namespace test-project --dry-run=client -o yaml | efs_kubectl apply -f - >/dev/null
  efs_kubectl apply -f "$EFS_DEMO_ROOT/efs-provisioner/deploy/storageclasses.yaml"
  efs_kubectl apply -f "$EFS_DEMO_ROOT/efs-provisioner/deploy/claims.yaml"
  efs_kubectl -n test-project wait --for=jsonpath='{.status.phase}'=Bound pvc/files pvc/files-fast --timeout=120s \
    || { tail -n 20 "$EFS_DEMO_STATE/provisioner.log"; return 1; }
  echo '$ kubectl -n test-project get pvc'
  efs_kubectl -n test-project get pvc
}

efs_down() {
  # Claims first, while the provisioner still runs, so their file systems are deleted.
  efs_kubectl -n test-project delete pvc files files-fast --ignore-not-found --wait=false >/dev/null 2>&1 || true
  local pv
  for pv in $(efs_kubectl get pv -o jsonpath='{range .items[?(@.spec.claimRef.namespace=="test-project")]}{.metadata.name}{" "}{end}' 2>/dev/null); do
    efs_kubectl wait --for=delete "pv/$pv" --timeout=60s >/dev/null 2>&1 || true
  done
  efs_kubectl delete -f "$EFS_DEMO_ROOT/efs-provisioner/deploy/storageclasses.yaml" --ignore-not-found >/dev/null 2>&1 || true
  if [[ -f "$EFS_DEMO_STATE/provisioner.pid" ]]; then
    kill "$(cat "$EFS_DEMO_STATE/provisioner.pid")" 2>/dev/null || true
    rm -f "$EFS_DEMO_STATE/provisioner.pid"
  fi
  MOTO_STATE_DIR="$EFS_DEMO_STATE/moto" "$EFS_DEMO_ROOT/tests/moto/down" >/dev/null 2>&1 || true
  return 0
}
