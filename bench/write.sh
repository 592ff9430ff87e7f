#!/usr/bin/env bash
# Write-path benchmark (issue: writes). Runs by hand, not in CI:
#
#   cargo build --release && bench/write.sh
#
# Against one local Apache mod_dav, in the same run, compares davdrive with curl:
#   - 1 GiB sequential write, complete on the server (close() returns after the server's
#     answer): time ratio to `curl -T` (target <= 1.15), daemon peak RSS (target < 48 MiB)
#   - 500 files x 100 KiB copied in with `cp -r`, all on the server: time ratio to one curl
#     uploading them in sequence (target <= 1.2), requests per file (target <= 1.05); the
#     same with --async-close, timed until all 500 are complete on the server
# Each figure is the median of RUNS runs (default 3). Needs root, apache2, fuse3, curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DAVDRIVE_BIN:-$ROOT/target/release/davdrive}
WORK=${BENCH_DIR:-/tmp/davdrive-bench-w}
PORT=${BENCH_PORT:-18182}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
. "$ROOT/bench/lib.sh"
read -r -a EXTRA <<< "${DAVDRIVE_MOUNT_ARGS:-}"
MOUNT_ARGS=(--cache-dir "$WORK/cache" "${EXTRA[@]}")

[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
SRC="$WORK/src"
mkdir -p "$SRC/src500"
if [ ! -f "$SRC/big.bin" ] || [ "$(stat -c %s "$SRC/big.bin")" != $((SIZE_MIB << 20)) ]; then
  echo "generating data in $SRC ..." >&2
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$SRC/big.bin"
  for i in $(seq -w 1 500); do head -c 102400 /dev/urandom > "$SRC/src500/f$i.bin"; done
fi
sync   # data just generated is written back first, not during the measurements
bench_start
cat "$SRC/big.bin" > /dev/null   # warm the page cache of the source for everybody

echo "== sequential write of $SIZE_MIB MiB, complete on the server"
c=(); d=(); rss=()
for r in $(seq 1 "$RUNS"); do
  rm -f "$WORK/www/curl.bin" "$WORK/www/dd.bin"; sync   # start each run without dirty pages
  s=$(now); curl -s -T "$SRC/big.bin" "$URL/curl.bin" -o /dev/null; e=$(now); c+=("$(secs "$s" "$e")")
  csize=$(stat -c %s "$WORK/www/curl.bin")
  [ "$csize" = $((SIZE_MIB << 20)) ] || echo "WARNING: curl left $csize bytes on the server" >&2
  # Both uploads start from the same state: the other one's file deleted, nothing dirty.
  # (Deleting a file frees page-cache pages that the next upload's server then reuses; on a
  # VM, pages never touched since boot cost several times more to fill.)
  rm -f "$WORK/www/curl.bin"; sync
  mount_dav; sync
  s=$(now); dd if="$SRC/big.bin" of="$MNT/dd.bin" bs=1M status=none; e=$(now); d+=("$(secs "$s" "$e")")
  rss+=("$(awk '/VmHWM/ { print $2 }' "/proc/$DAEMON/status")")
  echo "  run $r: curl -T ${c[-1]}s, davdrive ${d[-1]}s" >&2
  size=$(stat -c %s "$WORK/www/dd.bin")
  [ "$size" = $((SIZE_MIB << 20)) ] || echo "WARNING: server has $size bytes after close" >&2
  unmount_dav
done
cs=$(printf '%s\n' "${c[@]}" | median); ds=$(printf '%s\n' "${d[@]}" | median)
rk=$(printf '%s\n' "${rss[@]}" | median)
cmp -s "$SRC/big.bin" "$WORK/www/dd.bin" && echo "content on the server: identical" || echo "content on the server: DIFFERS"
echo "curl -T: ${cs}s  davdrive (dd, until close returned): ${ds}s  time ratio: $(ratio "$ds" "$cs"), paired per run $(pratio "${d[*]}" "${c[*]}")   (target <= 1.15)"
echo "daemon peak RSS: $((rk / 1024)) MiB   (target < 48 MiB)"

echo "== 500 files x 100 KiB"
c=(); d=(); q=(); a=(); ar=(); qa=()
# The copies of earlier runs are moved aside, and deleted only after the last run: this
# project's test machines have ext4 without a journal, where creating a file scans past every
# inode deleted in the last 30 s, so deleting 1,000 files before each run made every later
# file creation (Apache's and davdrive's) slower run after run (docs/PERFORMANCE.md).
TRASH="$WORK/www/.trash"
if [ -e "$TRASH" ] || [ -e "$WORK/www/cp500" ]; then
  rm -rf "$TRASH" "$WORK/www/curl500" "$WORK/www/cp500" "$WORK/www/cp500a"
  echo "  (waiting 31 s for the files just deleted to age)" >&2
  sleep 31
fi
mkdir -p "$TRASH"
aside() { local p; for p in "$@"; do [ ! -e "$p" ] || mv "$p" "$(mktemp -d "$TRASH/r.XXXXXX")/"; done; }
# Files of cp500a complete on the server (mod_dav_fs renames a PUT into place when done).
landed() { find "$WORK/www/cp500a" -maxdepth 1 -name 'f*.bin' -size 102400c 2>/dev/null | wc -l; }
files=$(cd "$SRC/src500" && ls | paste -sd, -)
for r in $(seq 1 "$RUNS"); do
  aside "$WORK/www/curl500" "$WORK/www/cp500"; mkdir -p "$WORK/www/curl500"; chown www-data: "$WORK/www/curl500"; sync
  s=$(now); (cd "$SRC/src500" && curl -s -T "{$files}" "$URL/curl500/" -o /dev/null); e=$(now); c+=("$(secs "$s" "$e")")
  mount_dav
  before=$(loglines)
  s=$(now); cp -r "$SRC/src500" "$MNT/cp500"; e=$(now); d+=("$(secs "$s" "$e")")
  sleep 0.2   # let Apache write its last log lines (measurement only)
  q+=("$(( $(loglines) - before ))")
  n=$(ls "$WORK/www/cp500" | wc -l)
  [ "$n" = 500 ] || echo "WARNING: $n files on the server" >&2
  unmount_dav
  # --async-close: cp returns earlier; timed until all 500 are complete on the server.
  aside "$WORK/www/cp500a"; sync
  MOUNT_ARGS+=(--async-close); mount_dav; unset 'MOUNT_ARGS[-1]'
  before=$(loglines)
  s=$(now); cp -r "$SRC/src500" "$MNT/cp500a"; e=$(now)
  for _ in $(seq 1 20000); do [ "$(landed)" = 500 ] && break; sleep 0.005; done; e2=$(now)
  [ "$(landed)" = 500 ] || echo "WARNING: $(landed) files complete on the server" >&2
  ar+=("$(secs "$s" "$e")"); a+=("$(secs "$s" "$e2")")
  sleep 0.2   # let Apache write its last log lines (measurement only)
  qa+=("$(( $(loglines) - before ))")
  unmount_dav
  echo "  run $r: curl ${c[-1]}s, cp -r ${d[-1]}s, cp -r --async-close ${a[-1]}s (cp returned after ${ar[-1]}s)" >&2
done
cs=$(printf '%s\n' "${c[@]}" | median); ds=$(printf '%s\n' "${d[@]}" | median)
qs=$(printf '%s\n' "${q[@]}" | median)
echo "curl (one process, 500 uploads): ${cs}s  davdrive cp -r: ${ds}s  time ratio: $(ratio "$ds" "$cs"), paired per run $(pratio "${d[*]}" "${c[*]}")   (target <= 1.2)"
echo "requests: $qs for 500 files = $(ratio "$qs" 500) per file   (target <= 1.05)"
as=$(printf '%s\n' "${a[@]}" | median); ars=$(printf '%s\n' "${ar[@]}" | median)
echo "davdrive --async-close cp -r, until all 500 on the server: ${as}s (cp returned after ${ars}s)  time ratio: $(ratio "$as" "$cs"), paired per run $(pratio "${a[*]}" "${c[*]}")   (target <= 1.2)"
qas=$(printf '%s\n' "${qa[@]}" | median)
echo "requests with --async-close: $qas for 500 files = $(ratio "$qas" 500) per file   (target <= 1.05)"
rm -rf "$TRASH"
