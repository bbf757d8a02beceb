#!/usr/bin/env bash
# Makes (once) and prints the path of the Python virtual environment the
# PyTorch and JAX end-to-end tests run in: the packages pinned in
# tests/python/requirements.txt, in a cache directory outside the checkout,
# named by a hash of that file, so it is reused by every run and every clone
# until the file changes. About 6 GiB and two minutes to build (torch from
# PyPI brings its CUDA libraries, unused here: the tests train on CPU).
#
#   SUP_PYTHON_CACHE  where environments live (default: $XDG_CACHE_HOME/sup or
#                     ~/.cache/sup); old ones there can be deleted at will.
#   PYTHON            the interpreter to build it from (default: python3).
#
# Prints the environment's directory on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=tests/python/requirements.txt
cache=${SUP_PYTHON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sup}
python=${PYTHON:-python3}
hash=$( (cat "$requirements"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
env_dir="$cache/python-$hash"

# .complete is written last: an install that was cut short is never reused.
if [ ! -f "$env_dir/.complete" ]; then
  echo "== building the Python test environment in $env_dir (torch, jax, orbax; once per requirements change)" >&2
  mkdir -p "$cache"
  rm -rf "$env_dir"
  start=$(date +%s)
  "$python" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check \
    --requirement "$requirements" >&2
  "$env_dir/bin/python" -c 'import torch, torch.distributed.checkpoint, jax, orbax.checkpoint' >&2
  touch "$env_dir/.complete"
  echo "== Python test environment built in $(( $(date +%s) - start )) s" >&2
fi
echo "$env_dir"
