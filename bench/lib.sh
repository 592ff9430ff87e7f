# Sourced by the bench scripts.
# start_apache DIR PORT starts Apache httpd with mod_dav on 127.0.0.1:PORT serving DIR/www at
# /dav/, logging method, path, status, bytes sent (%O) and Range per request to
# DIR/access.log; stop_apache DIR stops it. mount_dav / unmount_dav mount $URL on $MNT with
# $BIN (extra arguments in the MOUNT_ARGS array) and set DAEMON to the daemon's pid.
start_apache() {
  local dir=$1 port=$2 m=/usr/lib/apache2/modules
  mkdir -p "$dir/www" "$dir/run"
  cat > "$dir/httpd.conf" <<CONF
ServerRoot "$dir"
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile "$dir/httpd.pid"
DefaultRuntimeDir "$dir/run"
ErrorLog "$dir/error.log"
User www-data
Group www-data
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule alias_module $m/mod_alias.so
LoadModule dav_module $m/mod_dav.so
LoadModule dav_fs_module $m/mod_dav_fs.so
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
EnableSendfile On
LimitRequestBody 0
DavLockDB "$dir/run/davlock"
# Then when the request arrived (microseconds since the epoch) and how long it took (µs).
LogFormat "%m\t%U\t%>s\t%O\t%{Range}i\t%{usec}t\t%D\t%{remote}p\t%k" davlog
CustomLog "$dir/access.log" davlog
Alias /dav/ "$dir/www/"
<Directory "$dir/www">
    Dav On
    Options None
    Require all granted
</Directory>
CONF
  chown -R www-data:www-data "$dir/www" "$dir/run"
  apache2 -f "$dir/httpd.conf" -k start
  local i
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "apache did not start (see $dir/error.log)" >&2
  return 1
}

stop_apache() {
  apache2 -f "$1/httpd.conf" -k stop 2>/dev/null || true
}

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 1e9 }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# pratio "A1 A2 ..." "B1 B2 ...": the median over runs of Ai / Bi. Each run pairs curl and
# davdrive back to back, so this is steadier than the ratio of the medians when the
# machine's speed drifts between runs (it does on small VMs).
pratio() {
  paste -d' ' <(printf '%s\n' $1) <(printf '%s\n' $2) | awk '{ printf "%.4f\n", $1 / $2 }' |
    median | awk '{ printf "%.2f", $1 }'
}
loglines() { wc -l < "$WORK/access.log"; }
# busy: CPU time the whole machine has spent so far, in clock ticks (user, nice, system, irq,
# softirq from /proc/stat). cpusecs A B: the seconds between two readings.
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
cpusecs() { awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) / hz }'; }
mount_dav() {
  rm -f "$WORK/mount.out"
  "$BIN" mount "$URL" "$MNT" --foreground "${MOUNT_ARGS[@]}" > "$WORK/mount.out" 2> "$WORK/mount.err" &
  DAEMON=$!
  local i
  for i in $(seq 1 400); do
    grep -q "davdrive: mounted" "$WORK/mount.out" 2>/dev/null && return 0
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/mount.err" >&2; return 1; }
    sleep 0.025
  done
  return 1
}
# unmount_dav passes the mount's --cache-dir (from MOUNT_ARGS), so that unmount finds the
# daemon and waits for its uploads.
unmount_dav() {
  local args=() i
  for ((i = 0; i < ${#MOUNT_ARGS[@]}; i++)); do
    [ "${MOUNT_ARGS[i]}" != --cache-dir ] || args=(--cache-dir "${MOUNT_ARGS[i + 1]}")
  done
  "$BIN" unmount "$MNT" "${args[@]}"; wait "$DAEMON" || true; DAEMON=
}

# Starts Apache on $PORT serving $WORK, makes the mount point $MNT, sets $URL, and stops
# both on exit.
bench_start() {
  start_apache "$WORK" "$PORT"
  MNT=$(mktemp -d /tmp/davdrive-bench-mnt.XXXXXX)
  DAEMON=
  trap bench_cleanup EXIT
  URL="http://127.0.0.1:$PORT/dav/"
}
bench_cleanup() {
  if [ -n "$DAEMON" ]; then
    "$BIN" unmount "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
  fi
  stop_apache "$WORK"; rmdir "$MNT" 2>/dev/null || true
}
