#!/usr/bin/env bash
# The test command (README: "Run the tests"). CI runs exactly this through .ci/run.
# It installs what the tests need when it is missing, then checks formatting and
# lints, builds every binary (the end-to-end tests run them as processes) and
# runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# A build of the whole workspace takes ~3 GiB, the cached PyTorch/JAX environment
# ~6 GiB (once). A full disk shows up as a linker "Bus error" deep in cargo's
# output, so say it first, in plain words.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}');" \
       "the build and the Python environment need about 6 GiB more than a warm cache" >&2
fi
# Incremental state only pays off across edits; a CI run builds once.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # promtool validates /metrics
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)       # the example trainer
# scripts/python-env.sh makes a venv: Debian's python3 needs python3-venv for it.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)     # the dashboard's browser test
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd) # verifies deploy/*.service
command -v slurmctld >/dev/null 2>&1 || need_apt+=(slurm-wlm)   # a real Slurm for tests/e2e/tests/slurm.rs
command -v munged >/dev/null 2>&1 || need_apt+=(munge)          # Slurm's authentication
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)      # a real etcd for the etcd store's tests
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)   # their health and leader checks
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries and the fake NVML library for the end-to-end tests)"
cargo build --workspace --bins --locked
cargo build -p fake-nvml --locked
echo "== systemd-analyze verify deploy/*.service"
# The units name /usr/local/bin/..., which a CI machine does not have and
# verify insists on; check copies that point at the binaries just built.
units_dir=$(mktemp -d)
trap 'rm -rf "$units_dir"' EXIT
for unit in supd.service sup-agent.service; do
  sed "s|/usr/local/bin/|$PWD/target/debug/|g" "deploy/$unit" > "$units_dir/$unit"
done
systemd-analyze verify "$units_dir/supd.service" "$units_dir/sup-agent.service"
echo "== example trainer tests (python3, standard library)"
python3 -m unittest discover -s examples/trainer -p 'test_*.py' -v 2>&1 | tail -n 25
echo "== Python environment of the PyTorch and JAX tests (cached: scripts/python-env.sh)"
py_start=$(date +%s)
SUP_TEST_PYTHON="$(bash scripts/python-env.sh)/bin/python"
export SUP_TEST_PYTHON
echo "   $SUP_TEST_PYTHON ready in $(( $(date +%s) - py_start )) s"
echo "== cargo test"
cargo test --workspace --locked
