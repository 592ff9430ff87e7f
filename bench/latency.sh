#!/usr/bin/env bash
# Latency benchmark (issue 24): davdrive and curl through the same shaped link, in the same
# run. Runs by hand, not in CI:
#
#   cargo build --release --bins --example link-shaper && bench/latency.sh
#
# One Apache mod_dav on 127.0.0.1 behind examples/link-shaper (a user-space link: one-way
# delay, a bandwidth shared per direction, TCP's slow start and windows per connection; this
# kernel has no netem). PROFILES lists the links as RTT_MS/MBIT (default "30/100 2/1000").
# For each link, each figure is the median of RUNS runs (default 2), every run timing curl and
# davdrive back to back:
#   - `head -c 1M` of a 64 MiB file on a fresh mount (target <= 1.25 x curl -r, <= 2 MiB
#     fetched); `cat` of it (>= 0.95 x curl's speed); `cat` again, unchanged (<= 1 request,
#     no body bytes)
#   - a 64 MiB write until on the server (close returned) (<= 1.05 x curl -T)
#   - `find` over 30 folders of 20 files, cold (<= 0.5 x curl's 31 PROPFINDs one after the
#     other); the requests it costs when nobody descends (`ls` of the top only)
#   - `ls -l` of 2,000 entries cold (curl's one PROPFIND), warm `ls -l` and warm `du`
#     (requests)
#   - `cp -r` of 100 x 100 KiB until all on the server (<= 0.5 x one curl uploading them in
#     turn); with --async-close (<= 0.25 x)
#   - `git clone` of a generated 300-file repository into the mount, until git returns and
#     until everything is on the server (checked with `git fsck` there): default <= 12 s until
#     on the server; --async-close git returns <= 3 s, all on the server <= 6 s. git clone onto
#     local disk for reference.
# Needs root, apache2, fuse3, curl, git.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DAVDRIVE_BIN:-$ROOT/target/release/davdrive}
SHAPER=${SHAPER_BIN:-$ROOT/target/release/examples/link-shaper}
WORK=${BENCH_DIR:-/tmp/davdrive-bench-l}
PORT=${BENCH_PORT:-18183}
SPORT=${SHAPER_PORT:-18184}
RUNS=${RUNS:-2}
PROFILES=${PROFILES:-30/100 2/1000}
ONLY=${ONLY:-head cat write find ls cp git}
. "$ROOT/bench/lib.sh"
read -r -a EXTRA <<< "${DAVDRIVE_MOUNT_ARGS:-}"
MOUNT_ARGS=(--cache-dir "$WORK/cache" "${EXTRA[@]}")
for b in "$BIN" "$SHAPER"; do
  [ -x "$b" ] || { echo "build first: cargo build --release --bins --example link-shaper" >&2; exit 1; }
done
command -v git > /dev/null || { echo "needs git" >&2; exit 1; }

SRC="$WORK/src"
WWW="$WORK/www"
mkdir -p "$SRC" "$WWW"
if [ ! -f "$SRC/.done" ]; then
  echo "generating data in $SRC and $WWW ..." >&2
  head -c $((64 << 20)) /dev/urandom > "$WWW/big.bin"
  cp "$WWW/big.bin" "$SRC/big.bin"
  mkdir -p "$SRC/src100" "$WWW/list2000"
  for i in $(seq -w 1 100); do head -c 102400 /dev/urandom > "$SRC/src100/f$i.bin"; done
  for i in $(seq -w 1 2000); do printf 'file %s\n' "$i" > "$WWW/list2000/entry$i.txt"; done
  for d in $(seq -w 1 30); do
    mkdir -p "$WWW/tree/d$d"
    for f in $(seq -w 1 20); do head -c 1024 /dev/zero > "$WWW/tree/d$d/f$f.txt"; done
  done
  # A repository of 300 files in 20 folders, with a little history.
  repo="$SRC/repo"
  rm -rf "$repo"; git init -q "$repo"
  for i in $(seq 1 300); do
    d="$repo/dir$((i % 20))"; mkdir -p "$d"
    head -c $(( (i * 37 % 16 + 1) * 512 )) /dev/urandom | base64 > "$d/file$i.txt"
  done
  git -C "$repo" add -A
  git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -q -m "commit 1"
  for c in 2 3; do
    for i in $(seq "$c" 10 300); do echo "change $c" >> "$repo/dir$((i % 20))/file$i.txt"; done
    git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -q -a -m "commit $c"
  done
  touch "$SRC/.done"
fi
sync   # data just generated is written back first, not during the measurements
chown -R www-data:www-data "$WWW"
cat "$SRC/big.bin" > /dev/null

bench_start
SHAPER_PID=
stop_shaper() { [ -z "$SHAPER_PID" ] || { kill "$SHAPER_PID" 2>/dev/null; wait "$SHAPER_PID" 2>/dev/null || true; }; SHAPER_PID=; }
trap 'stop_shaper; bench_cleanup' EXIT
BASE="http://127.0.0.1:$PORT/dav"
URL="http://127.0.0.1:$SPORT/dav/"
U="http://127.0.0.1:$SPORT/dav"

# The requests Apache logged since line $1, and the body bytes of its GETs.
requests_since() { sleep 0.2; echo $(( $(loglines) - $1 )); }
# The same once the log has not grown for 0.5 s (at most 10 s): for requests made in the
# background (listings fetched ahead).
requests_settled() {
  local n m i
  n=$(loglines)
  for i in $(seq 1 20); do
    sleep 0.5; m=$(loglines); [ "$m" != "$n" ] || break; n=$m
  done
  echo $(( n - $1 ))
}
get_bytes_since() {
  sleep 0.2
  tail -n +"$(($1 + 1))" "$WORK/access.log" | awk -F'\t' '$1 == "GET" && $3 ~ /^2/ { n += $4 } END { print n + 0 }'
}
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
med() { printf '%s\n' "$@" | median; }
# until_on_server TIMEOUT CMD...: waits until CMD succeeds (polled every 20 ms).
until_on_server() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" > /dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "WARNING: not on the server after the timeout" >&2; return 1; }
    sleep 0.02
  done
}
propfind() { curl -s -X PROPFIND -H 'Depth: 1' "$@" > /dev/null; }
# The same files with the same sizes (.git/config differs: git notes there that the mount
# has no symlinks and no executable bit).
tree_of() { (cd "$1" && find . -type f ! -path ./.git/config -printf '%P %s\n' | sort); }
same_tree() { diff -q <(tree_of "$1") <(tree_of "$2"); }
complete100() { [ "$(find "$WWW/$1" -maxdepth 1 -name 'f*.bin' -size 102400c 2>/dev/null | wc -l)" = 100 ]; }
git_complete() {
  local g=(git -c safe.directory='*' -C "$WWW/$1")
  same_tree "$SRC/clone-ref" "$WWW/$1" || return 1
  [ -z "$("${g[@]}" fsck --no-progress 2>&1)" ] || return 1
  [ -z "$("${g[@]}" status --porcelain 2>&1)" ]
}

rm -rf "$SRC/clone-ref"
s=$(now); git clone -q "file://$SRC/repo" "$SRC/clone-ref"; e=$(now)
LOCAL_CLONE=$(secs "$s" "$e")

for profile in $PROFILES; do
  rtt=${profile%/*}; mbit=${profile#*/}
  "$SHAPER" "$SPORT" "127.0.0.1:$PORT" "$rtt" "$mbit" > "$WORK/shaper.out" 2> "$WORK/shaper.err" &
  SHAPER_PID=$!
  for _ in $(seq 1 200); do grep -q link-shaper "$WORK/shaper.out" 2>/dev/null && break; sleep 0.02; done
  echo "=== link: RTT $rtt ms, $mbit Mbit/s ($RUNS runs, medians; ratios are davdrive / curl)"

  if [[ " $ONLY " == *" head "* ]]; then
    c=(); d=(); b=()
    for r in $(seq 1 "$RUNS"); do
      s=$(now); curl -s -r 0-1048575 "$U/big.bin" -o /dev/null; e=$(now); c+=("$(secs "$s" "$e")")
      mount_dav; before=$(loglines)
      s=$(now); head -c 1048576 "$MNT/big.bin" > /dev/null; e=$(now); d+=("$(secs "$s" "$e")")
      b+=("$(get_bytes_since "$before")")
      unmount_dav
    done
    echo "head -c 1M, fresh mount: curl -r ${c[*]} s, davdrive ${d[*]} s: ratio $(ratio "$(med "${d[@]}")" "$(med "${c[@]}")") (target <= 1.25), fetched $(mib "$(med "${b[@]}")") MiB (target <= 2)"
  fi

  if [[ " $ONLY " == *" cat "* ]]; then
    c=(); d=(); d2=(); q2=(); b2=()
    for r in $(seq 1 "$RUNS"); do
      s=$(now); curl -s "$U/big.bin" -o /dev/null; e=$(now); c+=("$(secs "$s" "$e")")
      mount_dav
      s=$(now); cat "$MNT/big.bin" > /dev/null; e=$(now); d+=("$(secs "$s" "$e")")
      before=$(loglines)
      s=$(now); cat "$MNT/big.bin" > /dev/null; e=$(now); d2+=("$(secs "$s" "$e")")
      b2+=("$(get_bytes_since "$before")"); q2+=("$(requests_since "$before")")
      unmount_dav
    done
    cm=$(med "${c[@]}"); dm=$(med "${d[@]}")
    echo "cat 64 MiB: curl ${c[*]} s, davdrive ${d[*]} s: speed $(ratio "$cm" "$dm") x curl (target >= 0.95)"
    mibs=(); for x in "${b2[@]}"; do mibs+=("$(mib "$x")"); done
    echo "cat again, unchanged: ${d2[*]} s, ${q2[*]} requests, ${mibs[*]} MiB of body (target <= 1 request, 0 MiB)"
  fi

  if [[ " $ONLY " == *" write "* ]]; then
    c=(); d=()
    for r in $(seq 1 "$RUNS"); do
      rm -f "$WWW/curl.bin" "$WWW/dd.bin"
      s=$(now); curl -s -T "$SRC/big.bin" "$U/curl.bin" -o /dev/null; e=$(now); c+=("$(secs "$s" "$e")")
      mount_dav
      s=$(now); dd if="$SRC/big.bin" of="$MNT/dd.bin" bs=1M status=none; e=$(now); d+=("$(secs "$s" "$e")")
      cmp -s "$SRC/big.bin" "$WWW/dd.bin" || echo "WARNING: dd.bin differs on the server" >&2
      unmount_dav
    done
    echo "write 64 MiB until on the server: curl -T ${c[*]} s, davdrive ${d[*]} s: ratio $(ratio "$(med "${d[@]}")" "$(med "${c[@]}")") (target <= 1.05)"
  fi

  if [[ " $ONLY " == *" find "* ]]; then
    c=(); d=(); q=(); t=()
    urls=("$U/tree/"); for i in $(seq -w 1 30); do urls+=("$U/tree/d$i/"); done
    for r in $(seq 1 "$RUNS"); do
      # one curl, 31 PROPFINDs one after the other on one connection
      s=$(now); propfind "${urls[@]}"; e=$(now)
      c+=("$(secs "$s" "$e")")
      mount_dav; before=$(loglines)
      s=$(now); n=$(find "$MNT/tree" | wc -l); e=$(now); d+=("$(secs "$s" "$e")")
      [ "$n" = 631 ] || echo "WARNING: find saw $n entries" >&2
      q+=("$(requests_since "$before")")
      unmount_dav
      mount_dav; before=$(loglines)
      ls "$MNT/tree" > /dev/null
      t+=("$(requests_settled "$before")")
      unmount_dav
    done
    echo "find over 30 x 20, cold: curl's 31 PROPFINDs ${c[*]} s, davdrive ${d[*]} s ($(med "${q[@]}") requests): ratio $(ratio "$(med "${d[@]}")" "$(med "${c[@]}")") (target <= 0.5)"
    echo "ls of the top folder only: $(med "${t[@]}") requests"
  fi

  if [[ " $ONLY " == *" ls "* ]]; then
    c=(); d=(); w=(); wq=(); u=(); uq=()
    for r in $(seq 1 "$RUNS"); do
      s=$(now); propfind "$U/list2000/"; e=$(now); c+=("$(secs "$s" "$e")")
      mount_dav
      s=$(now); ls -l "$MNT/list2000" > /dev/null; e=$(now); d+=("$(secs "$s" "$e")")
      before=$(loglines)
      s=$(now); ls -l "$MNT/list2000" > /dev/null; e=$(now); w+=("$(secs "$s" "$e")")
      wq+=("$(requests_since "$before")")
      find "$MNT/tree" > /dev/null; before=$(loglines)
      s=$(now); du -s "$MNT/tree" > /dev/null; e=$(now); u+=("$(secs "$s" "$e")")
      uq+=("$(requests_since "$before")")
      unmount_dav
    done
    echo "ls -l of 2,000 entries, cold: curl ${c[*]} s, davdrive ${d[*]} s: ratio $(ratio "$(med "${d[@]}")" "$(med "${c[@]}")")"
    echo "warm ls -l: $(med "${w[@]}") s, $(med "${wq[@]}") requests; warm du of the tree: $(med "${u[@]}") s, $(med "${uq[@]}") requests"
  fi

  if [[ " $ONLY " == *" cp "* ]]; then
    c=(); d=(); q=(); a=(); ar=()
    files=$(cd "$SRC/src100" && ls | paste -sd, -)
    for r in $(seq 1 "$RUNS"); do
      rm -rf "$WWW/curl100" "$WWW/cp100" "$WWW/cp100a"
      s=$(now); curl -s -X MKCOL "$U/curl100/" -o /dev/null
      (cd "$SRC/src100" && curl -s -T "{$files}" "$U/curl100/" > /dev/null); e=$(now); c+=("$(secs "$s" "$e")")
      complete100 curl100 || echo "WARNING: curl's files incomplete" >&2
      mount_dav; before=$(loglines)
      s=$(now); cp -r "$SRC/src100" "$MNT/cp100"; e=$(now); d+=("$(secs "$s" "$e")")
      complete100 cp100 || echo "WARNING: cp's files incomplete after cp returned" >&2
      q+=("$(requests_since "$before")")
      unmount_dav
      MOUNT_ARGS+=(--async-close); mount_dav; unset 'MOUNT_ARGS[-1]'
      s=$(now); cp -r "$SRC/src100" "$MNT/cp100a"; e=$(now)
      until_on_server 60 complete100 cp100a || true; e2=$(now)
      ar+=("$(secs "$s" "$e")"); a+=("$(secs "$s" "$e2")")
      unmount_dav
    done
    cm=$(med "${c[@]}")
    echo "cp -r 100 x 100 KiB until on the server: curl (MKCOL + 100 PUTs in turn) ${c[*]} s, davdrive ${d[*]} s ($(med "${q[@]}") requests): ratio $(ratio "$(med "${d[@]}")" "$cm") (target <= 0.5)"
    echo "  --async-close: ${a[*]} s (cp returned after ${ar[*]} s): ratio $(ratio "$(med "${a[@]}")" "$cm") (target <= 0.25)"
  fi

  if [[ " $ONLY " == *" git "* ]]; then
    d=(); q=(); a=(); ar=()
    for r in $(seq 1 "$RUNS"); do
      rm -rf "$WWW/clone" "$WWW/clonea"
      mount_dav; before=$(loglines)
      s=$(now); git clone -q "file://$SRC/repo" "$MNT/clone"; e=$(now)
      until_on_server 120 git_complete clone || true; e2=$(now)
      d+=("$(secs "$s" "$e")/$(secs "$s" "$e2")"); q+=("$(requests_since "$before")")
      unmount_dav
      MOUNT_ARGS+=(--async-close); mount_dav; unset 'MOUNT_ARGS[-1]'
      s=$(now); git clone -q "file://$SRC/repo" "$MNT/clonea"; e=$(now)
      until_on_server 120 git_complete clonea || true; e2=$(now)
      ar+=("$(secs "$s" "$e")"); a+=("$(secs "$s" "$e2")")
      unmount_dav
    done
    echo "git clone of 300 files (onto local disk: $LOCAL_CLONE s): until git returns / until on the server: ${d[*]} s, $(med "${q[@]}") requests (target <= 12 s on the server)"
    echo "  --async-close: git returned after ${ar[*]} s (target <= 3), all on the server after ${a[*]} s (target <= 6)"
  fi
  stop_shaper
done
