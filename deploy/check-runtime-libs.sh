#!/usr/bin/env bash
# Checks that the runtime stage of deploy/Dockerfile installs every Debian
# package that a built binary's shared libraries come from. No container
# engine runs on the machines that build this project, so this is what keeps
# the image honest: the binaries built here link the same Debian bookworm
# libraries that the image installs.
#
#   deploy/check-runtime-libs.sh [--dockerfile FILE] BINARY...
#
# For each binary:
# - every library it needs (ldd, recursively) must be found;
# - each library it names itself (readelf -d, NEEDED) must come from a
#   package the runtime stage installs by name, or from the base image;
# - each library needed only through another library must come from a
#   package in the dependency closure (Depends, Pre-Depends) of those, as
#   apt would install it.
# The runtime stage's list itself must name real packages, no -dev package,
# and ca-certificates (the upstream is HTTPS).
#
# Prints one "ok:"/"FAIL:" line per finding and exits 1 on any failure.
set -euo pipefail

DOCKERFILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/Dockerfile"
# In every Debian image (Essential or Priority: required), so a Dockerfile
# need not name them.
BASE_PACKAGES=(libc6 libgcc-s1)

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

binaries=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dockerfile) DOCKERFILE="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) binaries+=("$1"); shift ;;
  esac
done
[ "${#binaries[@]}" -gt 0 ] || usage

for tool in ldd readelf dpkg dpkg-query; do
  if ! command -v "$tool" >/dev/null; then
    echo "FAIL: $tool not found (Debian packages libc-bin, binutils, dpkg)" >&2
    exit 1
  fi
done

failures=0
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }

# The package names that `apt-get install` lines of the runtime stage name:
# the stage called "runtime", else the last one. Continuation lines are
# joined and comment lines dropped, as Docker does.
runtime_packages() {
  awk '
    /^[[:space:]]*#/ { next }
    { line = line $0 }
    /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, " ", line); next }
    { print line; line = "" }
  ' "$1" | awk '
    toupper($1) == "FROM" {
      stage++; buf[stage] = ""; name[stage] = ""
      for (i = 2; i < NF; i++) if (toupper($i) == "AS") name[stage] = $(i + 1)
      next
    }
    stage && toupper($1) == "RUN" { buf[stage] = buf[stage] "\n" $0 }
    END {
      pick = stage
      for (s = 1; s <= stage; s++) if (name[s] == "runtime") pick = s
      print buf[pick]
    }
  ' | sed -e 's/&&/\n/g' -e 's/||/\n/g' -e 's/;/\n/g' | awk '
    {
      for (i = 1; i <= NF; i++) {
        if ($i == "apt-get" || $i == "apt") { cmd = 1; continue }
        if (cmd && $i == "install") { inst = 1; continue }
        if (inst && $i !~ /^-/) { sub(/=.*/, "", $i); print $i }
      }
      cmd = 0; inst = 0
    }
  ' | sort -u
}

# The Debian package that owns a file, trying the merged-/usr twin too.
owner_of() {
  local path="$1" real candidates=() c out
  real="$(readlink -f "$path" 2>/dev/null || echo "$path")"
  for c in "$path" "$real"; do
    candidates+=("$c")
    case "$c" in
      /usr/lib/*) candidates+=("${c#/usr}") ;;
      /lib/*) candidates+=("/usr$c") ;;
    esac
  done
  for c in "${candidates[@]}"; do
    if out="$(dpkg -S "$c" 2>/dev/null)"; then
      # "libcurl4:amd64: /usr/lib/x86_64-linux-gnu/libcurl.so.4"
      printf '%s\n' "${out%%:*}" | head -n 1
      return 0
    fi
  done
  return 1
}

# Every package apt would install along with the named ones (Depends and
# Pre-Depends, recursively), read from this machine's dpkg database: it is
# the same Debian release as the image.
closure() {
  local -A seen=()
  local queue=("$@") pkg deps dep alt
  while [ "${#queue[@]}" -gt 0 ]; do
    pkg="${queue[0]}"
    queue=("${queue[@]:1}")
    [ -n "${seen[$pkg]:-}" ] && continue
    seen[$pkg]=1
    deps="$(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$pkg" 2>/dev/null || true)"
    while IFS= read -r dep; do
      # "libssl3 (>= 3.0.0) | libssl1.1" -> each alternative that is installed
      for alt in $(printf '%s\n' "$dep" | tr '|' '\n' | sed -E 's/\(.*\)//; s/:[a-z0-9]+//; s/[[:space:]]//g'); do
        [ -n "$alt" ] || continue
        if dpkg-query -W -f='${Status}' "$alt" 2>/dev/null | grep -q 'install ok installed'; then
          queue+=("$alt")
        fi
      done
    done < <(printf '%s\n' "$deps" | tr ',' '\n')
  done
  printf '%s\n' "${!seen[@]}" | sort
}

if [ ! -f "$DOCKERFILE" ]; then
  echo "FAIL: no Dockerfile at $DOCKERFILE"
  exit 1
fi
mapfile -t listed < <(runtime_packages "$DOCKERFILE")
if [ "${#listed[@]}" -eq 0 ]; then
  fail "the runtime stage of $DOCKERFILE installs no package with apt-get install"
  exit 1
fi
ok "runtime stage installs: ${listed[*]}"

# The list itself.
has_ca=0
for pkg in "${listed[@]}"; do
  case "$pkg" in
    *-dev) fail "runtime stage installs the build-time package $pkg" ;;
    ca-certificates) has_ca=1 ;;
  esac
  if ! dpkg-query -W "$pkg" >/dev/null 2>&1 && ! apt-cache show "$pkg" >/dev/null 2>&1; then
    fail "runtime stage names $pkg, which is no Debian package known here"
  fi
done
if [ "$has_ca" -eq 1 ]; then
  ok "ca-certificates is installed (HTTPS upstream)"
else
  fail "runtime stage lacks ca-certificates: the sidecar's upstream is HTTPS"
fi

declare -A direct_ok=() closure_ok=()
for pkg in "${listed[@]}" "${BASE_PACKAGES[@]}"; do direct_ok[$pkg]=1; done
while IFS= read -r pkg; do closure_ok[$pkg]=1; done < <(closure "${listed[@]}" "${BASE_PACKAGES[@]}")

for bin in "${binaries[@]}"; do
  if [ ! -x "$bin" ]; then
    fail "$bin: no such executable (build it first: bazel build //server:videotask_sidecar //plugin:videotask)"
    continue
  fi
  name="$(basename "$bin")"
  if ! ldd_out="$(ldd "$bin" 2>&1)"; then
    fail "$name: ldd failed: $ldd_out"
    continue
  fi
  if grep -q 'not found' <<<"$ldd_out"; then
    fail "$name: libraries not found on this machine: $(grep 'not found' <<<"$ldd_out" | awk '{print $1}' | tr '\n' ' ')"
  fi
  mapfile -t needed < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  declare -A is_direct=()
  for so in "${needed[@]}"; do is_direct[$so]=1; done

  count=0
  # "libcurl.so.4 => /lib/x86_64-linux-gnu/libcurl.so.4 (0x...)" and the
  # loader as "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
  while read -r so path; do
    [ -n "$path" ] || continue
    count=$((count + 1))
    if ! pkg="$(owner_of "$path")"; then
      fail "$name: $so ($path) belongs to no Debian package; the image copies only the binary (is it a Bazel-built shared library? link it statically)"
      continue
    fi
    if [ -n "${is_direct[$so]:-}" ]; then
      if [ -n "${direct_ok[$pkg]:-}" ]; then
        ok "$name: $so from $pkg (installed by name)"
      else
        fail "$name: needs $so from package $pkg, which the runtime stage of $(basename "$DOCKERFILE") does not install: add $pkg to its apt-get install"
      fi
    else
      if [ -n "${closure_ok[$pkg]:-}" ]; then
        ok "$name: $so from $pkg (a dependency)"
      else
        fail "$name: needs $so (through another library) from package $pkg, which nothing in the runtime stage pulls in: add $pkg to its apt-get install"
      fi
    fi
  done < <(awk '
    $2 == "=>" && $3 ~ /^\// { print $1, $3; next }
    $1 ~ /^\// { n = split($1, p, "/"); print p[n], $1 }
  ' <<<"$ldd_out")
  unset is_direct
  if [ "$count" -eq 0 ]; then
    ok "$name: statically linked, needs no shared library"
  fi
done

if [ "$failures" -gt 0 ]; then
  echo "runtime libraries: $failures problem(s)"
  exit 1
fi
echo "runtime libraries: the runtime stage installs everything the binaries need"
