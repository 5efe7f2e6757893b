#!/usr/bin/env bats
# The Buildkite plugin's hooks, run as the agent runs them, against the
# real nixdelta binary and real Nix on chroot stores. `buildkite-agent` is a
# recording stand-in (the real one needs a Buildkite account): annotate,
# meta-data and redactor calls are checked from its log.
#
# Run by the integration tests (tests/integration/ci_buildkite.rs), or:
#   NIXDELTA_BIN=target/debug/nixdelta bats tests/bats

setup() {
  REPO=${REPO:-$(cd "$BATS_TEST_DIRNAME/../.." && pwd)}
  NIXDELTA_BIN=${NIXDELTA_BIN:-$REPO/target/debug/nixdelta}
  PLUGIN=$REPO
  export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'
  T=$BATS_TEST_TMPDIR
  mkdir -p "$T/work" "$T/bin" "$T/tmp"
  export TMPDIR=$T/tmp
  cp "$REPO/examples/fib.nix" "$REPO/examples/fails-in-install.nix" "$T/work/"
  printf '{\n  "nodes": {\n    "root": {}\n  },\n  "root": "root",\n  "version": 7\n}\n' >"$T/work/flake.lock"
  cd "$T/work"
  # What the agent sets for a job.
  export BUILDKITE=true
  export BUILDKITE_JOB_ID="job-$BATS_TEST_NUMBER-1"
  export BUILDKITE_REPO=git@github.com:o/r.git
  export BUILDKITE_PULL_REQUEST=false
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY=$NIXDELTA_BIN
  export NIXDELTA_STORE=$T/store1
  unset NIXDELTA_SECRET_KEY NIXDELTA_ARCHIVE NIXDELTA_STRICT NIXDELTA_CI BUILDKITE_COMMAND_EXIT_STATUS
  "$NIXDELTA_BIN" keygen bk-1 --out "$T/keys" >/dev/null 2>&1
  cat >"$T/bin/buildkite-agent" <<'EOS'
#!/usr/bin/env bash
{ echo "ARGS: $*"; cat; echo; echo "END"; } >>"$AGENT_LOG"
# artifact upload PATH: a copy in $AGENT_ARTIFACTS, as the agent uploads it.
if [[ "$1 $2" == "artifact upload" ]]; then
  mkdir -p "$AGENT_ARTIFACTS" && cp "$3" "$AGENT_ARTIFACTS/"
fi
EOS
  chmod +x "$T/bin/buildkite-agent"
  export AGENT_LOG=$T/agent.log
  export AGENT_ARTIFACTS=$T/artifacts
  touch "$AGENT_LOG"
  export PATH="$T/bin:$PATH"
}

teardown() {
  if [[ -n "${SERVER_PID:-}" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
}

# has TEXT: the last `run` printed TEXT.
has() {
  [[ "$output" == *"$1"* ]] || {
    echo "expected in the output: $1"
    echo "--- output:"
    echo "$output"
    return 1
  }
}

hasnt() {
  [[ "$output" != *"$1"* ]] || {
    echo "not expected in the output: $1"
    echo "--- output:"
    echo "$output"
    return 1
  }
}

ok() {
  [[ "$status" -eq 0 ]] || {
    echo "exit status $status"
    echo "$output"
    return 1
  }
}

build() {
  nix-build --store "$NIXDELTA_STORE" fib.nix --no-out-link "$@" 2>&1
}

# agent_hook NAME: runs a hook as the agent does: sourced in a bash, the
# variables it exports carried into the command (left in $T/hook.env).
agent_hook() {
  bash -c '. "$1"; s=$?; export -p >"$2"; exit $s' _ "$PLUGIN/hooks/$1" "$T/hook.env"
}

# The command's environment after pre-command: its NIX_USER_CONF_FILES.
command_env() {
  eval "$(sed -n 's/^declare -x \(NIX_USER_CONF_FILES=\)/export \1/p' "$T/hook.env")"
}

@test "a job pushes and saves the archive; the next job on a fresh store restores it and builds nothing" {
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  export BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE="dir:$T/archives"
  export BUILDKITE_PLUGIN_NIXDELTA_SECRET_KEY_ENV=BK_NIX_KEY
  BK_NIX_KEY=$(cat "$T/keys/bk-1.sec")
  export BK_NIX_KEY

  run "$PLUGIN/hooks/pre-command"
  ok
  has "~~~ nixdelta: restore the store archive"
  has "| result | miss |"
  has "nixdelta: snapshot at id 0"
  build -A fib6

  run "$PLUGIN/hooks/post-command"
  ok
  has "| new paths considered | 15 |"
  has "| skipped: derivations (.drv) | 7 |"
  # watch is on by default: the uploader pushed the 8 during the command.
  has "| uploaded during the build | 8 ("
  has "| uploaded | 0 |"
  has "| result | saved |"
  has "| paths | 8 ("
  hasnt "${BK_NIX_KEY#*:}"
  [[ $(ls "$T/cache"/*.narinfo | wc -l) -eq 8 ]]
  grep -q "^ARGS: redactor add" "$AGENT_LOG"
  grep -q "^ARGS: annotate --style info --context nixdelta --append" "$AGENT_LOG"
  grep -q "| uploaded during the build | 8 (" "$AGENT_LOG"
  grep -q "^ARGS: meta-data set nixdelta-cache-hit" "$AGENT_LOG"
  grep -q "^ARGS: meta-data set nixdelta-pushed-paths" "$AGENT_LOG"

  # The next job, on an agent with an empty store.
  export BUILDKITE_JOB_ID="job-$BATS_TEST_NUMBER-2"
  export NIXDELTA_STORE=$T/store2
  run "$PLUGIN/hooks/pre-command"
  ok
  has "| result | hit |"
  has "| paths | 8 restored, 0 already valid"
  run build -A fib6 --max-jobs 0
  ok
  hasnt "will be built"
  run "$PLUGIN/hooks/post-command"
  ok
  has "| uploaded | 0 |"
  has "| result | not saved: exact key hit |"
}

@test "a pull-only job: pre-command makes the command's Nix read the cache; the user's nix.conf and NIX_CONFIG still apply" {
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  NIXDELTA_SECRET_KEY=$(cat "$T/keys/bk-1.sec") "$NIXDELTA_BIN" --store "$T/store1" push \
    --to "file://$T/cache" "$(build -A fib6 | tail -n1)" >/dev/null 2>&1
  # The next job: a fresh store, the public key only, skip-push; the user's
  # own nix.conf (`substituters =`) and NIX_CONFIG (nix-command, signatures).
  export NIXDELTA_STORE=$T/store2
  export BUILDKITE_JOB_ID="job-$BATS_TEST_NUMBER-2"
  export BUILDKITE_PLUGIN_NIXDELTA_PUBLIC_KEY
  BUILDKITE_PLUGIN_NIXDELTA_PUBLIC_KEY=$(cat "$T/keys/bk-1.pub")
  export BUILDKITE_PLUGIN_NIXDELTA_SKIP_PUSH=true
  mkdir -p "$T/xdg/nix"
  echo "substituters =" >"$T/xdg/nix/nix.conf"
  export XDG_CONFIG_HOME=$T/xdg
  export NIX_CONFIG=$'experimental-features = nix-command\nrequire-sigs = true'
  nix-store --store "$T/store2" --init
  run build -A fib6 --max-jobs 0
  [[ "$status" -ne 0 ]]

  run agent_hook pre-command
  ok
  has "nixdelta: notice: skip-push: a pull-only job"
  has "| substituter | \`file://$T/cache\` |"
  command_env
  [[ "$NIX_USER_CONF_FILES" == "$TMPDIR/nixdelta-bk-"*"/nix.conf:$T/xdg/nix/nix.conf:"* ]]
  run build -A fib6 --max-jobs 0
  ok
  hasnt "will be built"
  run nix path-info --store "$T/store2" "$(build -A fib6 --max-jobs 0 | tail -n1)"
  ok

  run "$PLUGIN/hooks/post-command"
  ok
  has "| pushed | nothing: a pull-only job |"
  [[ ! -e "${NIX_USER_CONF_FILES%%:*}" ]]
}

@test "post-command runs after a failed command and pushes what it built; array options" {
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  export NIXDELTA_SECRET_KEY
  NIXDELTA_SECRET_KEY=$(cat "$T/keys/bk-1.sec")
  export BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_0='-fib-3$'
  export BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_1='-fib-2$'
  # watch off: post-command pushes everything itself.
  export BUILDKITE_PLUGIN_NIXDELTA_WATCH=false
  run "$PLUGIN/hooks/pre-command"
  ok
  hasnt "restore the store archive"
  build -A fib4
  export BUILDKITE_COMMAND_EXIT_STATUS=2
  run "$PLUGIN/hooks/post-command"
  ok
  has "the command exited with 2"
  has "| skipped: excluded by pattern | 2 |"
  has "| uploaded | 4 |"
  hasnt "uploaded during the build"
  [[ $(ls "$T/cache"/*.narinfo | wc -l) -eq 4 ]]
}

@test "keep-failed: a build failing in its install phase keeps its tree, uploaded as an artifact and fetched back" {
  export BUILDKITE_PLUGIN_NIXDELTA_KEEP_FAILED=true
  export BUILDKITE_BUILD_ID=build-42
  run agent_hook pre-command
  ok
  has "keep-failed: the job's Nix keeps failed build directories"
  command_env
  run nix-build --store "$NIXDELTA_STORE" fails-in-install.nix --no-out-link
  [[ "$status" -ne 0 ]]
  has "keeping build directory"
  export BUILDKITE_COMMAND_EXIT_STATUS=1
  run "$PLUGIN/hooks/post-command"
  ok
  has "kept 1 failed build trees"
  has "as Buildkite artifact failed-"
  grep -q "^ARGS: artifact upload failed-job-[0-9]*-[0-9a-f]*\.tar\.zst$" "$AGENT_LOG"
  grep -q "| fetch | \`buildkite-agent artifact download failed-" "$AGENT_LOG"
  # The printed command, with the agent's download done by hand here.
  fetch=$(sed -n 's/.*Fetch them: buildkite-agent artifact download [^ ]* . --build build-42 && \(nixdelta failed-tree fetch [^;]*\) ;.*/\1/p' <<<"$output")
  [[ "$fetch" == "nixdelta failed-tree fetch --file failed-job-"*".tar.zst --out ./failed-tree" ]]
  mkdir "$T/fresh" && cd "$T/fresh"
  cp "$AGENT_ARTIFACTS"/failed-job-*.tar.zst .
  run "$NIXDELTA_BIN" ${fetch#nixdelta }
  ok
  tree=$(echo failed-tree/nix-build-fails-in-install.drv-*)
  [[ "$(cat "$tree/install-progress.txt")" == "copied 1 of 2 files" ]]
  [[ "$(cat "$tree/build.log")" == compiled ]]
  [[ -f "$tree/src/main.c" ]]
  # Only the build directory: nothing else of the agent's temp dir.
  [[ "$(ls failed-tree)" == "CUT.txt"$'\n'"nix-build-fails-in-install.drv-"* ]]

  # Without keep-failed nothing is kept.
  unset BUILDKITE_PLUGIN_NIXDELTA_KEEP_FAILED
  export BUILDKITE_JOB_ID="job-$BATS_TEST_NUMBER-2"
  run agent_hook pre-command
  ok
  hasnt "keep-failed"
}

@test "options from the checkout's nixdelta.yml, under the plugin's" {
  # The cache and watch off from the file (the plugin's default, watch on,
  # must not hide it); the plugin's exclude replaces the file's.
  printf 'binary-cache: file://%s/cache\nwatch: false\nexclude:\n  - -fib-3$\n' "$T" >nixdelta.yml
  export BUILDKITE_PLUGIN_NIXDELTA_EXCLUDE_0='-fib-2$'
  export NIXDELTA_SECRET_KEY
  NIXDELTA_SECRET_KEY=$(cat "$T/keys/bk-1.sec")
  run "$NIXDELTA_BIN" --ci buildkite config finish
  ok
  has "(nixdelta.yml:1)"
  has "(CI input exclude)"
  has "***  (env NIXDELTA_SECRET_KEY)"
  hasnt "$(cut -d: -f2 "$T/keys/bk-1.sec")"
  run "$PLUGIN/hooks/pre-command"
  ok
  hasnt "background uploader"
  build -A fib4
  run "$PLUGIN/hooks/post-command"
  ok
  has "| skipped: excluded by pattern | 1 |"
  has "| uploaded | 5 |"
  hasnt "uploaded during the build"
  ls "$T/cache"/*.narinfo | xargs grep -l -- '-fib-3$' >/dev/null
  # strict from the file alone (not the plugin's option) fails the hook on
  # a cache error: the binary reads it and the hook passes its status on.
  printf 'archive: dir:/dev/null/no-archive\nstrict: true\n' >nixdelta.yml
  run "$PLUGIN/hooks/pre-command"
  [[ "$status" -ne 0 ]]
  has "cannot list: Not a directory"
}

@test "watch: pre-command leaves a background uploader that pushes during the command; post-command drains it" {
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  export BUILDKITE_PLUGIN_NIXDELTA_WATCH=true
  export NIXDELTA_SECRET_KEY
  NIXDELTA_SECRET_KEY=$(cat "$T/keys/bk-1.sec")
  run "$PLUGIN/hooks/pre-command"
  ok
  has "background uploader"
  build -A fib4
  # fib-0..4 and busybox reach the cache while the command runs.
  for _ in $(seq 300); do
    [[ $(ls "$T/cache"/*.narinfo 2>/dev/null | wc -l) -eq 6 ]] && break
    sleep 0.1
  done
  [[ $(ls "$T/cache"/*.narinfo | wc -l) -eq 6 ]]
  run "$PLUGIN/hooks/post-command"
  ok
  has "| uploaded during the build | 6 ("
  has "| uploaded | 0 |"
  grep -q "^ARGS: meta-data set nixdelta-pushed-paths" "$AGENT_LOG"
}

@test "a pull request from a fork restores read-only and pushes nothing" {
  export BUILDKITE_PULL_REQUEST=7
  export BUILDKITE_PULL_REQUEST_REPO=https://github.com/someone/r.git
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  export BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE="dir:$T/archives"
  run "$PLUGIN/hooks/pre-command"
  ok
  has "nixdelta: notice: pull request from a fork: the store archive is restored read-only"
  has "| result | miss |"
  build -A fib3
  run "$PLUGIN/hooks/post-command"
  ok
  has "nothing is pushed to the binary cache"
  has "| result | not saved: read-only |"
  [[ ! -e "$T/cache" ]]
  [[ -z "$(ls -A "$T/archives" 2>/dev/null)" ]]
}

@test "post-command without pre-command warns and succeeds; strict fails" {
  run "$PLUGIN/hooks/post-command"
  ok
  has "nixdelta: warning: nothing to finish"
  export BUILDKITE_PLUGIN_NIXDELTA_STRICT=true
  run "$PLUGIN/hooks/post-command"
  [[ "$status" -ne 0 ]]
  has "did start run?"
}

@test "without a binary the job goes on (strict fails); a download must match the manifest" {
  unset BUILDKITE_PLUGIN_NIXDELTA_BINARY
  cp -r "$REPO/hooks" "$REPO/lib" "$REPO/dist" "$T/"
  PLUGIN=$T
  # Nothing listens on port 1 of the loopback address.
  export BUILDKITE_PLUGIN_NIXDELTA_DOWNLOAD_URL=http://127.0.0.1:1
  run "$PLUGIN/hooks/pre-command"
  ok
  has "nixdelta: warning: no nixdelta binary: start skipped"
  BUILDKITE_PLUGIN_NIXDELTA_STRICT=true run "$PLUGIN/hooks/pre-command"
  [[ "$status" -ne 0 ]]
  # Strict from the checkout's nixdelta.yml alone fails too.
  printf '# the team wants to know\nstrict: true  # fail on cache errors\n' >nixdelta.yml
  run "$PLUGIN/hooks/pre-command"
  [[ "$status" -ne 0 ]]
  has "no nixdelta binary; failing (strict)"
  rm nixdelta.yml

  # A release served on 127.0.0.1: the manifest pins its sha256.
  target=$(uname -m)-unknown-linux-musl
  mkdir -p "$T/srv/v9.9.9"
  printf '#!/bin/sh\necho "released nixdelta $*"\n' >"$T/srv/v9.9.9/nixdelta-$target"
  sum=$(sha256sum "$T/srv/v9.9.9/nixdelta-$target" | cut -d' ' -f1)
  cat >"$T/dist/manifest.json" <<EOJ
{
  "version": "9.9.9",
  "tag": "v9.9.9",
  "binaries": {
    "$target": { "file": "nixdelta-$target", "sha256": "$sum" }
  }
}
EOJ
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$T/srv" >"$T/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    port=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$T/server.log" | head -n1)
    [[ -n "$port" ]] && break
    sleep 0.1
  done
  export BUILDKITE_PLUGIN_NIXDELTA_DOWNLOAD_URL=http://127.0.0.1:$port
  run "$PLUGIN/hooks/pre-command"
  ok
  has "released nixdelta --ci buildkite start"
  # Cached per agent, checked again on use; a tampered download is refused.
  rm -rf "$TMPDIR/nixdelta-plugin"
  printf '#!/bin/sh\necho tampered\n' >"$T/srv/v9.9.9/nixdelta-$target"
  run "$PLUGIN/hooks/pre-command"
  ok
  has "does not match the sha256 in dist/manifest.json"
  hasnt "tampered"
}

@test "plugin.yml: a valid plugin definition whose schema accepts the README example and rejects typos" {
  run python3 - "$REPO/plugin.yml" "$REPO/README.md" <<'EOP'
import re, sys, yaml, jsonschema
plugin = yaml.safe_load(open(sys.argv[1]))
for field in ("name", "description", "author", "requirements", "configuration"):
    assert field in plugin, f"plugin.yml has no {field}"
schema = plugin["configuration"]
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
readme = open(sys.argv[2]).read()
block = re.search(r"<!-- buildkite-example -->\s*```yaml\n(.*?)```", readme, re.S)
assert block, "README has no buildkite example"
pipeline = yaml.safe_load(block.group(1))
found = 0
for step in pipeline["steps"]:
    for plugin_entry in step.get("plugins", []):
        for name, config in plugin_entry.items():
            if "nixdelta" in name:
                v.validate(config)
                found += 1
assert found, "no nixdelta plugin in the README example"
v.validate({"binary-cache": "file:///c", "exclude": ["a", "b"], "strict": True, "jobs": 4})
for bad in ({"binary_cache": "x"}, {"strict": "yes"}, {"exclude": 3}):
    assert not v.is_valid(bad), bad
print("plugin.yml ok,", found, "example(s)")
EOP
  ok
  has "plugin.yml ok"
}

@test "the store option: a local?root= URL is the store start and finish read" {
  unset NIXDELTA_STORE
  export BUILDKITE_PLUGIN_NIXDELTA_STORE="local?root=$T/store3"
  # The uploader's own test is above; here the upload is counted in post-command.
  export BUILDKITE_PLUGIN_NIXDELTA_WATCH=false
  export BUILDKITE_PLUGIN_NIXDELTA_BINARY_CACHE="file://$T/cache"
  export BUILDKITE_PLUGIN_NIXDELTA_ARCHIVE=none
  export BUILDKITE_PLUGIN_NIXDELTA_SECRET_KEY_ENV=BK_NIX_KEY
  BK_NIX_KEY=$(cat "$T/keys/bk-1.sec")
  export BK_NIX_KEY
  run "$PLUGIN/hooks/pre-command"
  ok
  has "nixdelta: snapshot at id 0"
  NIXDELTA_STORE=$T/store3 build -A fib6
  run "$PLUGIN/hooks/post-command"
  ok
  has "| uploaded | 8 |"
  [[ $(ls "$T/cache"/*.narinfo | wc -l) -eq 8 ]]
  [[ -e "$T/store3/nix/var/nix/db/db.sqlite" ]]

  export BUILDKITE_PLUGIN_NIXDELTA_STORE="ssh://host"
  run "$PLUGIN/hooks/pre-command"
  [[ "$status" -eq 2 ]]
  has "bad store"
}
