#!/usr/bin/env bash
# Builds the images StacyVM's Docker tests use, without any image registry: each image is a root
# filesystem made on this machine and loaded with `docker import`.
#
#   stacyvm-test/busybox:latest   static busybox, every applet linked, user `sandbox` (uid 1000)
#   stacyvm-test/debian:bookworm  debootstrap minbase + python3, nodejs, ca-certificates, from the
#                                 apt mirror this machine is configured with; user `sandbox`
#
# An image that is present (and carries this recipe's labels) is left alone. The Debian root
# filesystem is cached as a tarball, so after a Docker reset it is re-imported without downloading.
#
# Usage: scripts/build-test-images.sh [--force] [--only busybox|debian]
#   --force          rebuild even when present, and rebuild the Debian rootfs instead of using the cache
#   --only NAME      build only that image (repeatable)
# Env:
#   STACYVM_IMAGE_CACHE     cache directory (default /var/cache/stacyvm-images)
#   STACYVM_DEBIAN_MIRROR   Debian mirror URL, overriding the one read from the apt sources
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Bump when a recipe changes: images with an older recipe label are rebuilt, and the Debian
# rootfs cache key changes with it.
readonly RECIPE=1
readonly LABEL=org.stacyvm.test-image
readonly BUSYBOX_IMAGE=stacyvm-test/busybox:latest
readonly DEBIAN_IMAGE=stacyvm-test/debian:bookworm
readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_PACKAGES=python3,nodejs,ca-certificates
readonly IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

cache_dir="${STACYVM_IMAGE_CACHE:-/var/cache/stacyvm-images}"
force=0
only=()

say() { printf 'build-test-images: %s\n' "$*"; }
die() {
  printf 'build-test-images: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --only)
      [ $# -ge 2 ] || die "--only needs busybox or debian"
      case "$2" in
        busybox | debian) only+=("$2") ;;
        *) die "--only: unknown image \"$2\" (busybox or debian)" ;;
      esac
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument \"$1\" (see --help)" ;;
  esac
  shift
done

wanted() {
  [ "${#only[@]}" -eq 0 ] && return 0
  local o
  for o in "${only[@]}"; do [ "$o" = "$1" ] && return 0; done
  return 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and file ownership need it"

elapsed() { printf '%ss' "$((SECONDS - $1))"; }

# --- host packages ----------------------------------------------------------------------------

apt_updated=0
apt_log="${TMPDIR:-/tmp}/stacyvm-build-test-images-apt.log"

# Installs the given Debian packages when dpkg does not have them; `apt-get update` runs at most once.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 ||
      { tail -n 20 "$apt_log" >&2; die "apt-get update failed (log: $apt_log)"; }
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$apt_log" 2>&1 ||
    { tail -n 20 "$apt_log" >&2; die "apt-get install ${missing[*]} failed (log: $apt_log)"; }
}

# --- docker helpers ---------------------------------------------------------------------------

# True when the image exists and was built by this recipe of this script.
image_current() {
  local name="$1" kind="$2" labels
  labels="$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}} {{index .Config.Labels \"$LABEL.recipe\"}}" "$name" 2>/dev/null)" ||
    return 1
  [ "$labels" = "$kind $RECIPE" ]
}

# Reads a tar stream on stdin and imports it as image $1 of kind $2 with command $3. The image the
# name pointed to before is removed when this script made it and nothing else uses it, so
# rebuilds do not pile up untagged copies.
import_image() {
  local name="$1" kind="$2" cmd="$3" old old_label
  old="$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)"
  old_label="$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$name" 2>/dev/null || true)"
  docker import \
    --change "CMD [\"$cmd\"]" \
    --change "ENV PATH=$IMAGE_PATH" \
    --change "LABEL $LABEL=$kind $LABEL.recipe=$RECIPE" \
    --message "stacyvm test image ($kind, recipe $RECIPE)" \
    - "$name" >/dev/null
  if [ -n "$old" ] && [ "$old_label" = "$kind" ] &&
    [ "$(docker image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null || true)" = 0 ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
}

smoke() {
  local name="$1"
  shift
  local out
  out="$(docker run --rm --network none "$name" "$@" 2>&1)" ||
    die "smoke test of $name failed: $* -> $out"
}

# --- work directories -------------------------------------------------------------------------

work_dirs=()

# debootstrap mounts /proc and /sys inside the target; unmount anything under a work dir before
# deleting it, and never let rm cross into another file system.
cleanup() {
  local d m
  for d in "${work_dirs[@]}"; do
    [ -d "$d" ] || continue
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$d"
  done
}
trap cleanup EXIT
# Make an interrupt run the EXIT trap too, so no mount or half-built rootfs is left behind.
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets $work_dir to a new directory under $1 that the EXIT trap removes. Not meant for $(...):
# the registration must happen in this shell, not in a subshell.
new_work_dir() {
  work_dir="$(mktemp -d "$1/stacyvm-build.XXXXXX")"
  work_dirs+=("$work_dir")
}

# --- busybox ----------------------------------------------------------------------------------

# Prints the path of the static busybox; call ensure_packages busybox-static first.
busybox_binary() {
  local bb=/bin/busybox
  [ -x "$bb" ] || die "busybox-static is installed but $bb is missing"
  local linkage
  linkage="$(LC_ALL=C ldd "$bb" 2>&1 || true)"
  case "$linkage" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) die "$bb is dynamically linked; the image needs the busybox-static package" ;;
  esac
  printf '%s\n' "$bb"
}

build_busybox() {
  local t0=$SECONDS bb work r applet
  ensure_packages busybox-static
  bb="$(busybox_binary)"
  new_work_dir "${TMPDIR:-/tmp}"
  work="$work_dir"
  r="$work/rootfs"
  say "busybox: assembling rootfs from $bb"
  mkdir -p "$r"/{bin,dev,etc,proc,root,sys,tmp,usr,var,workspace}
  install -m 0755 "$bb" "$r/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
  done
  # Every applet lives in /bin; the other usual directories point there, so scripts that name
  # /usr/bin/env or /sbin/ip find them.
  ln -s bin "$r/sbin"
  ln -s ../bin "$r/usr/bin"
  ln -s ../bin "$r/usr/sbin"
  ln -s ../tmp "$r/var/tmp"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sandbox:x:1000:1000::/workspace:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
sandbox:x:1000:
nogroup:x:65534:
EOF
  chmod 0644 "$r/etc/passwd" "$r/etc/group"
  chmod 1777 "$r/tmp"
  chmod 0700 "$r/root"
  chown 1000:1000 "$r/workspace"
  chmod 0755 "$r/workspace"
  say "busybox: importing $BUSYBOX_IMAGE ($("$bb" --list | wc -l) applets)"
  tar --numeric-owner -C "$r" -c . | import_image "$BUSYBOX_IMAGE" busybox /bin/sh
  smoke "$BUSYBOX_IMAGE" sh -c 'id sandbox && test -d /workspace && /usr/bin/env true'
  say "busybox: $BUSYBOX_IMAGE ready in $(elapsed "$t0")"
}

# --- debian -----------------------------------------------------------------------------------

# Prints "<uri> <keyring-or-dash>" for each enabled `deb` source that serves suite $1, in the order
# apt reads them: sources.list, then sources.list.d/*.list and *.sources sorted by name.
apt_sources_for_suite() {
  local suite="$1" f files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*; do
    case "$f" in *.list | *.sources) [ -f "$f" ] && files+=("$f") ;; esac
  done
  for f in "${files[@]}"; do
    case "$f" in
      *.sources) deb822_sources "$suite" "$f" ;;
      *) one_line_sources "$suite" "$f" ;;
    esac
  done
}

# One-line format: deb [opt=value ...] URI SUITE COMPONENT...
one_line_sources() {
  awk -v want="$1" '
    { sub(/#.*/, "") }
    $1 != "deb" { next }
    {
      i = 2; key = "-"
      if ($i ~ /^\[/) {
        opts = ""
        while (i <= NF) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } i++ }
        gsub(/[\[\]]/, "", opts)
        n = split(opts, o, " ")
        for (k = 1; k <= n; k++) if (o[k] ~ /^signed-by=/) { key = substr(o[k], 11) }
      }
      uri = $i; suite = $(i + 1)
      if (suite == want) print uri, key
    }
  ' "$2"
}

# deb822 format: stanzas of Types/URIs/Suites/Signed-By/Enabled fields separated by blank lines.
deb822_sources() {
  awk -v want="$1" '
    function flush(   n, s, u, k, t, ok) {
      if (enabled != "no" && types ~ /(^| )deb( |$)/) {
        n = split(suites, s, " ")
        ok = 0
        for (k = 1; k <= n; k++) if (s[k] == want) ok = 1
        if (ok) {
          split(uris, u, " ")
          print u[1], (key == "" ? "-" : key)
        }
      }
      types = ""; uris = ""; suites = ""; key = ""; enabled = ""; field = ""
    }
    /^#/ { next }
    /^[ \t]*$/ { flush(); next }
    /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
    {
      name = tolower($0); sub(/:.*/, "", name)
      value = $0; sub(/^[^:]*:[ \t]*/, "", value)
      field = name
      if (name == "types") types = value
      else if (name == "uris") uris = value
      else if (name == "suites") suites = value
      else if (name == "enabled") enabled = tolower(value)
      else if (name == "signed-by") key = (value ~ /^\// ? value : "-")
    }
    END { flush() }
  ' "$2"
}

# Sets $mirror and $keyring for the Debian build.
pick_mirror() {
  keyring=-
  if [ -n "${STACYVM_DEBIAN_MIRROR:-}" ]; then
    mirror="$STACYVM_DEBIAN_MIRROR"
    say "debian: mirror $mirror (from STACYVM_DEBIAN_MIRROR)"
    return
  fi
  local uri key
  while read -r uri key; do
    case "$uri" in
      http://* | https://* | file:/*)
        mirror="$uri"
        keyring="$key"
        say "debian: mirror $mirror (from the apt sources for $DEBIAN_SUITE)"
        return
        ;;
    esac
  done < <(apt_sources_for_suite "$DEBIAN_SUITE")
  mirror=http://deb.debian.org/debian
  say "debian: no apt source serves $DEBIAN_SUITE; falling back to $mirror (set STACYVM_DEBIAN_MIRROR to choose)"
}

# Runs debootstrap with its full output in $1 and prints its stage lines, not one line per package.
run_debootstrap() {
  local log="$1"
  shift
  local line fetched=0 configured=0 status
  set +e
  debootstrap "$@" 2>&1 | tee "$log" | while IFS= read -r line; do
    case "$line" in
      "I: Retrieving "[a-z0-9]*" "[0-9]*)
        fetched=$((fetched + 1))
        if [ $((fetched % 25)) -eq 0 ]; then say "debian: downloaded $fetched packages"; fi
        ;;
      "I: Configuring "*)
        configured=$((configured + 1))
        if [ $((configured % 25)) -eq 0 ]; then say "debian: configured $configured packages"; fi
        ;;
      "I: Validating "* | "I: Extracting "* | "I: Unpacking "*) ;;
      "I: "* | "E: "* | "W: "*) say "debian: ${line}" ;;
    esac
  done
  status="${PIPESTATUS[0]}"
  set -e
  if [ "$status" -ne 0 ]; then
    printf -- '--- last lines of %s ---\n' "$log" >&2
    tail -n 25 "$log" >&2
    die "debootstrap failed (exit $status)"
  fi
}

build_debian_rootfs() {
  local tarball="$1" t0=$SECONDS work r arch mirror keyring
  ensure_packages debootstrap debian-archive-keyring
  pick_mirror
  arch="$(dpkg --print-architecture)"
  new_work_dir "$cache_dir"
  work="$work_dir"
  r="$work/rootfs"
  local args=(--variant=minbase --arch="$arch" --include="$DEBIAN_PACKAGES")
  if [ "$keyring" != - ] && [ -r "$keyring" ]; then args+=(--keyring="$keyring"); fi
  say "debian: debootstrap $DEBIAN_SUITE ($arch, minbase + ${DEBIAN_PACKAGES//,/ }); this takes a few minutes"
  run_debootstrap "$work/debootstrap.log" "${args[@]}" "$DEBIAN_SUITE" "$r" "$mirror"
  say "debian: debootstrap done in $(elapsed "$t0"); adding user sandbox and cleaning up"
  chroot "$r" /usr/sbin/groupadd --gid 1000 sandbox
  chroot "$r" /usr/sbin/useradd --uid 1000 --gid 1000 --home-dir /workspace --no-create-home \
    --shell /bin/bash sandbox
  install -d -o 1000 -g 1000 -m 0755 "$r/workspace"
  chroot "$r" /usr/bin/apt-get clean
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/debconf/*-old \
    "$r"/var/log/apt/* "$r"/var/log/dpkg.log "$r"/var/log/bootstrap.log
  # Docker provides these at run time; the image should not carry the build host's copies.
  : >"$r/etc/resolv.conf"
  rm -f "$r/etc/hostname"
  say "debian: writing rootfs tarball $tarball"
  tar --numeric-owner -C "$r" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
    -c . | gzip -6 >"$tarball.partial"
  mv -f "$tarball.partial" "$tarball"
  say "debian: rootfs built in $(elapsed "$t0") ($(du -h "$tarball" | cut -f1) compressed)"
}

build_debian() {
  local t0=$SECONDS arch tarball
  arch="$(dpkg --print-architecture)"
  tarball="$cache_dir/debian-$DEBIAN_SUITE-$arch-recipe$RECIPE.tar.gz"
  if [ "$force" -eq 1 ] || [ ! -s "$tarball" ]; then
    build_debian_rootfs "$tarball"
  else
    say "debian: using cached rootfs $tarball"
  fi
  say "debian: importing $DEBIAN_IMAGE"
  import_image "$DEBIAN_IMAGE" debian /bin/bash <"$tarball"
  smoke "$DEBIAN_IMAGE" sh -c 'python3 -c "print(1)" && node -e "console.log(1)" && id sandbox'
  say "debian: $DEBIAN_IMAGE ready in $(elapsed "$t0")"
}

# --- main -------------------------------------------------------------------------------------

"$here/docker-up.sh"
mkdir -p "$cache_dir"
# Two runs at once (parallel CI jobs) would build the same rootfs twice and race on the tarball.
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  say "another build holds $cache_dir/.lock; waiting"
  flock 9
fi

start=$SECONDS
if wanted busybox; then
  if [ "$force" -eq 0 ] && image_current "$BUSYBOX_IMAGE" busybox; then
    say "busybox: $BUSYBOX_IMAGE present"
  else
    build_busybox
  fi
fi
if wanted debian; then
  if [ "$force" -eq 0 ] && image_current "$DEBIAN_IMAGE" debian; then
    say "debian: $DEBIAN_IMAGE present"
  else
    build_debian
  fi
fi
say "done in $(elapsed "$start")"
