#!/usr/bin/env bash
# The deploy-image test: builds the runtime image with deploy/build-image from
# the binaries of a build directory, reads it back with skopeo (entrypoint,
# labels, architecture), unpacks its layers and runs both binaries in a chroot
# of it, which proves their shared libraries resolve in the image. Also checks
# that build-image leaves nothing behind, after a failure too.
#
#   check_image.sh SOURCE_DIR BIN_DIR CACHE_DIR
#
# The Debian root is cached in CACHE_DIR between runs (a cold run spends a
# minute or two in mmdebstrap, a warm one about 15 s in all). Needs root
# (mmdebstrap, buildah, chroot): not root, it skips (exit 77), or fails under
# CI=true.
set -euo pipefail

source_dir=${1:?usage: check_image.sh SOURCE_DIR BIN_DIR CACHE_DIR}
bin_dir=${2:?usage: check_image.sh SOURCE_DIR BIN_DIR CACHE_DIR}
cache_dir=${3:?usage: check_image.sh SOURCE_DIR BIN_DIR CACHE_DIR}
build_timeout=${EGRESSD_IMAGE_TIMEOUT:-240}  # seconds; CTest's TIMEOUT is a minute more

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() {
  if [ "${CI:-}" = true ]; then fail "$* (CI=true: this test must run)"; fi
  echo "SKIP: $*" >&2
  exit 77
}
pass() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (mmdebstrap, buildah and chroot)"
for tool in mmdebstrap buildah skopeo python3 unshare timeout; do
  command -v "$tool" >/dev/null || skip "$tool is missing (scripts/install-deps installs it)"
done
for binary in egressd egressctl; do
  [ -x "$bin_dir/$binary" ] || fail "$bin_dir/$binary is missing: build it first"
done
version_line=$("$bin_dir/egressd" --version)
version=${version_line##* }
arch=$(dpkg --print-architecture)
ref=docker.io/library/egressd:$version

tmp=$(mktemp -d "${TMPDIR:-/tmp}/egressd-check-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tmp" "$tmp/root"
# build-image's workspace goes in here: empty again afterwards, or it left something.
export TMPDIR=$tmp/tmp

# buildah writes /var/lib/containers/cache and /run/containers unless
# build-image keeps it in its own mount namespace. Checked only where they do
# not exist yet (other tools may use them).
leftovers=()
for path in /var/lib/containers /run/containers; do
  [ -e "$path" ] || leftovers+=("$path")
done
check_clean() {  # WHEN
  local path
  for path in "${leftovers[@]}"; do
    [ ! -e "$path" ] || fail "build-image left $path behind ($1)"
  done
  [ -z "$(ls -A "$tmp/tmp")" ] || fail "build-image left its workspace behind ($1): $(ls -A "$tmp/tmp")"
  ! grep -q egressd-image /proc/self/mountinfo || fail "build-image left a mount behind ($1)"
}

# ---- 1. a failure cleans up --------------------------------------------------
# An unreachable mirror (the discard port on loopback: refused at once) and an
# empty cache: mmdebstrap fails inside the workspace.
if timeout 60 "$source_dir/deploy/build-image" --bin-dir "$bin_dir" --out "$tmp/never.tar" \
     --rootfs-cache "$tmp/empty-cache" --mirror "deb http://127.0.0.1:9/debian bookworm main" \
     >"$tmp/fail.log" 2>&1; then
  fail "build-image succeeded with an unreachable mirror"
fi
grep -q "mmdebstrap failed" "$tmp/fail.log" || { cat "$tmp/fail.log" >&2; fail "build-image did not fail in mmdebstrap"; }
[ ! -e "$tmp/never.tar" ] || fail "a failed build-image wrote its archive"
[ -z "$(ls -A "$tmp/empty-cache" 2>/dev/null)" ] || fail "a failed build-image wrote to its rootfs cache"
check_clean "after a failure"
pass "a failed build cleans up after itself"

# ---- 2. the build ------------------------------------------------------------
archive=$tmp/egressd.oci.tar
started=$SECONDS
# TERM first, so build-image's trap cleans up, before CTest's own timeout.
timeout --kill-after=15 "$build_timeout" "$source_dir/deploy/build-image" \
  --bin-dir "$bin_dir" --out "$archive" --rootfs-cache "$cache_dir" \
  || fail "deploy/build-image failed or took over ${build_timeout} s (exit $?)"
check_clean "after a build"
size_mb=$(( $(stat -c %s "$archive") / 1024 / 1024 ))
pass "built $archive: $size_mb MB in $((SECONDS - started)) s"
ls "$cache_dir"/rootfs-*.tar >/dev/null 2>&1 || fail "no Debian root was cached in $cache_dir"
# About 70 MB today, the binaries with their debug information included.
[ "$size_mb" -le 120 ] || fail "the image is $size_mb MB: more than 120 MB, was something unintended added?"

# ---- 3. what skopeo reads back -----------------------------------------------
skopeo inspect "oci-archive:$archive:$ref" >"$tmp/inspect.json" || fail "skopeo cannot read $ref in $archive"
skopeo inspect --config "oci-archive:$archive:$ref" >"$tmp/config.json" || fail "skopeo cannot read the config"
python3 - "$tmp/inspect.json" "$tmp/config.json" "$version" "$arch" <<'EOF' || fail "the image's metadata (above)"
import json, sys
inspect, config = (json.load(open(p)) for p in sys.argv[1:3])
version, arch = sys.argv[3:5]
errors = []
def expect(what, got, want):
    if got != want:
        errors.append(f"{what}: {got!r}, expected {want!r}")
expect("architecture", inspect.get("Architecture"), arch)
expect("os", inspect.get("Os"), "linux")
cfg = config.get("config", {})
expect("entrypoint", cfg.get("Entrypoint"), ["/usr/local/bin/egressd"])
expect("cmd", cfg.get("Cmd"), ["--config", "/etc/egressd/egressd.yaml"])
env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
expect("EGRESSD_CONFIG", env.get("EGRESSD_CONFIG"), "/etc/egressd/egressd.yaml")
if "/usr/bin" not in env.get("PATH", "").split(":"):
    errors.append(f"PATH lacks /usr/bin: {env.get('PATH')!r}")
labels = inspect.get("Labels") or {}
expect("label org.opencontainers.image.title", labels.get("org.opencontainers.image.title"), "egressd")
expect("label org.opencontainers.image.version", labels.get("org.opencontainers.image.version"), version)
for key in ("description", "revision", "created"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        errors.append(f"label org.opencontainers.image.{key} is missing")
if not inspect.get("Layers"):
    errors.append("no layers")
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
pass "skopeo: $ref, $arch, entrypoint /usr/local/bin/egressd, labels"

# ---- 4. the layers, unpacked -------------------------------------------------
mkdir -p "$tmp/oci"
tar -xf "$archive" -C "$tmp/oci"
mapfile -t layers < <(python3 - "$tmp/oci" "$ref" <<'EOF'
import json, sys, os
oci, ref = sys.argv[1:3]
index = json.load(open(os.path.join(oci, "index.json")))
named = [m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
if len(named) != 1:
    sys.exit(f"index.json names {ref} {len(named)} times")
def blob(digest):
    return os.path.join(oci, "blobs", *digest.split(":", 1))
manifest = json.load(open(blob(named[0]["digest"])))
for layer in manifest["layers"]:
    print(layer["digest"], blob(layer["digest"]))
EOF
) || fail "cannot read the archive's index and manifest"
[ ${#layers[@]} -gt 0 ] || fail "the manifest has no layers"
for layer in "${layers[@]}"; do
  digest=${layer%% *} file=${layer#* }
  [ "sha256:$(sha256sum "$file" | cut -d' ' -f1)" = "$digest" ] || fail "layer $digest: wrong digest"
  # OCI whiteouts: .wh.NAME deletes NAME of the layers below; .wh..wh..opq
  # empties its directory. (Whatever the compression, GNU tar detects it.)
  while IFS= read -r entry; do
    entry=${entry#./}
    dir=$(dirname "$entry") base=$(basename "$entry")
    if [ "$base" = .wh..wh..opq ]; then
      find "$tmp/root/$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    else
      rm -rf "${tmp:?}/root/$dir/${base#.wh.}"
    fi
  done < <(tar -tf "$file" | grep -E '(^|/)\.wh\.[^/]*$' || true)
  tar -xf "$file" -C "$tmp/root" --exclude='.wh.*' --exclude='*/.wh.*' --numeric-owner
done
pass "unpacked ${#layers[@]} layer(s), digests verified"

# ---- 5. the binaries, run in the image ---------------------------------------
in_image() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$tmp/root" "$@"; }
for binary in egressd egressctl; do
  missing=$(in_image ldd "/usr/local/bin/$binary" | grep 'not found' || true)
  [ -z "$missing" ] || fail "$binary's libraries are missing in the image:"$'\n'"$missing"
done
got=$(in_image /usr/local/bin/egressd --version) || fail "egressd --version failed in the image"
[ "$got" = "egressd $version" ] || fail "egressd --version in the image said '$got'"
in_image /usr/local/bin/egressctl --help >"$tmp/help.txt" || fail "egressctl --help failed in the image"
grep -q '^egressctl' "$tmp/help.txt" || fail "egressctl --help in the image printed: $(head -3 "$tmp/help.txt")"
pass "in a chroot of the image: egressd --version ($got), egressctl --help"
# The DaemonSet's init container mounts bpffs with the image's sh, grep and mount.
in_image sh -c 'command -v grep && command -v mount' >/dev/null \
  || fail "the image lacks grep or mount (the init container of deploy/base/daemonset.yaml runs them)"
[ -s "$tmp/root/etc/ssl/certs/ca-certificates.crt" ] || fail "the image has no CA bundle"
pass "the image has sh, grep, mount and a CA bundle"
echo "PASS: deploy-image ($size_mb MB)"
