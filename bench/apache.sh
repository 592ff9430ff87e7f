# Sourced by the bench scripts: start_apache DIR PORT starts Apache httpd with mod_dav on
# 127.0.0.1:PORT serving DIR/www at /dav/, logging method, path, status, bytes sent (%O)
# and Range per request to DIR/access.log. stop_apache stops it.
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
LogFormat "%m\t%U\t%>s\t%O\t%{Range}i" davlog
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
