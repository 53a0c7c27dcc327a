# Sourced: start_fake_apiserver DIR SEED [PORT] starts tests/k8s/fake_apiserver.py
# over TLS on 127.0.0.1 (a CA and a server certificate made in DIR, a token in
# DIR/token) and writes DIR/kubeconfig for it. Sets fake_pid and fake_port.
# The server stops with its parent (--exit-with-parent).
start_fake_apiserver() {
  local dir=$1 seed=$2 port=${3:-0}
  local fake
  fake="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fake_apiserver.py"
  if [ ! -f "$dir/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" \
      -out "$dir/ca.crt" -days 2 -subj "/CN=egressd-fake-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/server.key" \
      -out "$dir/server.csr" -subj "/CN=127.0.0.1" >/dev/null 2>&1 || return 1
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth" > "$dir/ext.cnf"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -out "$dir/server.crt" -days 2 -extfile "$dir/ext.cnf" >/dev/null 2>&1 || return 1
    echo "token-$RANDOM-$RANDOM" > "$dir/token"
  fi
  rm -f "$dir/port"
  python3 "$fake" --port "$port" --port-file "$dir/port" --cert "$dir/server.crt" --key "$dir/server.key" \
    --token-file "$dir/token" --seed "$seed" --bookmark-interval 1 --exit-with-parent >>"$dir/fake.log" 2>&1 &
  fake_pid=$!
  for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
  [ -s "$dir/port" ] || return 1
  fake_port=$(cat "$dir/port")
  cat > "$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "https://127.0.0.1:$fake_port", certificate-authority: $dir/ca.crt}}]
users: [{name: fake-user, user: {tokenFile: $dir/token}}]
contexts: [{name: fake, context: {cluster: fake, user: fake-user}}]
current-context: fake
KUBECONFIG
}
