#!/usr/bin/env bash
# Shared by the Buildkite plugin's hooks: find the nixdelta binary and run
# `nixdelta --ci buildkite STEP`. The binary reads the plugin's options
# (BUILDKITE_PLUGIN_NIXDELTA_*) itself.

nixdelta_plugin_dir() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# Strict from the option or from nixdelta.yml's top-level `strict: true`
# (read here: without a binary there is nobody to ask).
nixdelta_strict() {
  case "${BUILDKITE_PLUGIN_NIXDELTA_STRICT:-false}" in
    true | yes | on | 1) return 0 ;;
  esac
  grep -Eqs '^strict:[[:blank:]]*true[[:blank:]]*(#.*)?$' "${NIXDELTA_CONFIG:-nixdelta.yml}"
}

# The Rust target triple of this agent's binary.
nixdelta_target() {
  local arch os
  arch=$(uname -m)
  os=$(uname -s)
  case "$arch" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) return 1 ;;
  esac
  case "$os" in
    Linux) echo "$arch-unknown-linux-musl" ;;
    Darwin) echo "$arch-apple-darwin" ;;
    *) return 1 ;;
  esac
}

nixdelta_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# Prints the path of the binary: the `binary` option, nixdelta on PATH,
# or the release of this plugin's dist/manifest.json, downloaded once per
# agent and checked against the manifest's sha256.
nixdelta_find_binary() {
  if [[ -n "${BUILDKITE_PLUGIN_NIXDELTA_BINARY:-}" ]]; then
    [[ -x "$BUILDKITE_PLUGIN_NIXDELTA_BINARY" ]] || {
      echo "nixdelta: $BUILDKITE_PLUGIN_NIXDELTA_BINARY is not an executable file" >&2
      return 1
    }
    echo "$BUILDKITE_PLUGIN_NIXDELTA_BINARY"
    return 0
  fi
  if command -v nixdelta >/dev/null 2>&1; then
    command -v nixdelta
    return 0
  fi
  local dir manifest target line file sha version tag base dest part
  dir=$(nixdelta_plugin_dir)
  manifest="$dir/dist/manifest.json"
  target=$(nixdelta_target) || {
    echo "nixdelta: no release binary for $(uname -s) $(uname -m)" >&2
    return 1
  }
  # One line per target in the manifest (release.yml keeps it so).
  line=$(grep "\"$target\"" "$manifest" || true)
  file=$(sed -n 's/.*"file": *"\([^"]*\)".*/\1/p' <<<"$line")
  sha=$(sed -n 's/.*"sha256": *"\([0-9a-f]*\)".*/\1/p' <<<"$line")
  version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$manifest" | head -n1)
  tag=$(sed -n 's/^ *"tag": *"\([^"]*\)".*/\1/p' "$manifest" | head -n1)
  tag=${tag:-v$version}
  if [[ -z "$file" || -z "$sha" ]]; then
    echo "nixdelta: dist/manifest.json has no checksum for $target (version $version): use a released version of the plugin, or the binary option" >&2
    return 1
  fi
  dest="${TMPDIR:-/tmp}/nixdelta-plugin/$version/$file"
  if [[ -x "$dest" && "$(nixdelta_sha256 "$dest")" == "$sha" ]]; then
    echo "$dest"
    return 0
  fi
  base=${BUILDKITE_PLUGIN_NIXDELTA_DOWNLOAD_URL:-https://github.com/nixdelta/nixdelta/releases/download}
  mkdir -p "$(dirname "$dest")"
  part="$dest.$$.part"
  echo "nixdelta: downloading $base/$tag/$file" >&2
  if ! curl -fsSL --retry 3 --connect-timeout 10 -o "$part" "$base/$tag/$file"; then
    rm -f "$part"
    echo "nixdelta: cannot download $base/$tag/$file" >&2
    return 1
  fi
  if [[ "$(nixdelta_sha256 "$part")" != "$sha" ]]; then
    rm -f "$part"
    echo "nixdelta: $base/$tag/$file does not match the sha256 in dist/manifest.json; refusing to run it" >&2
    return 1
  fi
  chmod 755 "$part"
  mv -f "$part" "$dest"
  echo "$dest"
}

# nixdelta_run start|finish
nixdelta_run() {
  local step=$1 bin
  if ! bin=$(nixdelta_find_binary); then
    if nixdelta_strict; then
      echo "nixdelta: error: no nixdelta binary; failing (strict)" >&2
      return 1
    fi
    echo "nixdelta: warning: no nixdelta binary: $step skipped (not failing the job)" >&2
    echo "^^^ +++"
    return 0
  fi
  "$bin" --ci buildkite "$step"
}
