# Shared by scripts/up and scripts/test. Installs only what is missing, so it is safe to rerun.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Builds and downloads live outside the clone so fresh clones reuse them.
CACHE_DIR="${LIVECOMMENTS_CACHE:-$HOME/.cache/livecomments}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
mkdir -p "$CACHE_DIR"

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PACKAGE COMMAND: installs a Debian package unless COMMAND already exists.
apt_install() {
  local pkg="$1" cmd="$2"
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  log "installing $pkg (Debian package) for $cmd"
  if ! as_root apt-get install -y -q "$pkg" >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    as_root apt-get install -y -q "$pkg" >/dev/null
  fi
}

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo is missing: install Rust (https://rustup.rs) and rerun" >&2
    exit 1
  }
}

raise_nofile() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}
