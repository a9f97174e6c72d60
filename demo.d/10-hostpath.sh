# The hostpath provisioner part of ./demo: a Node object `demo-node` reported
# Ready (as a kubelet would register it; no kubelet runs, so pods are
# scheduled, never run), the provisioner running in the background for it
# with a base dir under $DEMO_DIR, the WaitForFirstConsumer class of
# hostpath-provisioner/deploy, a claim, and a pod that uses it: the
# kube-scheduler picks the node and sets the claim's selected node, the
# node's instance provisions, and the scheduler binds the pod there.

hostpath_up() {
  local dir="$DEMO_DIR/hostpath" bin pid
  mkdir -p "$dir/volumes"
  log "building hostpath-provisioner"
  cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p hostpath-provisioner --bin hostpath-provisioner
  bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/hostpath-provisioner"

  # The hostname label differs from the node name on purpose: PVs pin it.
  kubectl apply -f - <<YAML
apiVersion: v1
kind: Node
metadata:
  name: demo-node
  labels:
    kubernetes.io/hostname: demo-host
YAML
  # What a kubelet reports, and the node lifecycle controller's lifting of
  # the not-ready taint once the node is Ready.
  kubectl patch node demo-node --subresource=status --type=merge -p "{\"status\":{
    \"capacity\":{\"cpu\":\"4\",\"memory\":\"8Gi\",\"pods\":\"110\"},
    \"allocatable\":{\"cpu\":\"4\",\"memory\":\"8Gi\",\"pods\":\"110\"},
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",
      \"lastHeartbeatTime\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"lastTransitionTime\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}]}}" >/dev/null
  kubectl patch node demo-node --type=merge -p '{"spec":{"taints":null}}' >/dev/null

  if [[ -f "$dir/provisioner.pid" ]] && kill -0 "$(cat "$dir/provisioner.pid")" 2>/dev/null; then
    log "hostpath-provisioner already running (pid $(cat "$dir/provisioner.pid"))"
  else
    PROVISIONER_NODE_NAME=demo-node PROVISIONER_BASE_DIRS="$dir/volumes" PROVISIONER_METRICS_ADDRESS="" \
      setsid "$bin" >"$dir/provisioner.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/provisioner.pid"
    log "hostpath-provisioner running as pid $pid (log: $dir/provisioner.log)"
  fi

  kubectl apply -f "$ROOT/hostpath-provisioner/deploy/storageclass.yaml"
  kubectl apply -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: demo-data
  namespace: default
spec:
  storageClassName: hostpath
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 1Gi
YAML
  kubectl apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: demo-app
  namespace: default
spec:
  containers:
    - name: app
      image: registry.invalid/demo-app:never-pulled
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: demo-data}
YAML
  log "waiting for the scheduler to place the pod and the claim to be Bound"
  if ! kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/demo-data -n default --timeout=90s >/dev/null; then
    log "the claim did not bind; the provisioner's log:"
    tail -n 30 "$dir/provisioner.log" >&2
    return 1
  fi
  local pv path
  pv="$(kubectl get pvc demo-data -n default -o jsonpath='{.spec.volumeName}')"
  path="$(kubectl get pv "$pv" -o jsonpath='{.spec.local.path}')"
  echo
  echo "\$ kubectl get pvc -n default"
  kubectl get pvc -n default
  echo
  echo "\$ kubectl get pod demo-app -n default -o wide"
  kubectl wait --for=jsonpath='{.spec.nodeName}'=demo-node pod/demo-app -n default --timeout=60s >/dev/null
  kubectl get pod demo-app -n default -o wide
  echo
  echo "\$ kubectl get pv"
  kubectl get pv
  echo
  echo "\$ kubectl get pv $pv -o jsonpath='{.spec.nodeAffinity}'"
  kubectl get pv "$pv" -o jsonpath='{.spec.nodeAffinity}'
  echo
  echo
  echo "\$ ls -la $dir/volumes"
  ls -la "$dir/volumes"
  echo
  echo "\$ ls -la $path"
  ls -la "$path"
  echo
}

hostpath_down() {
  local pidfile="$DEMO_DIR/hostpath/provisioner.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    log "stopped hostpath-provisioner (pid $pid)"
  fi
  rm -f "$pidfile"
}
