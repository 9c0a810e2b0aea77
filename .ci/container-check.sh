#!/usr/bin/env bash
# The container image, run for real without Docker.
#
# Reads Dockerfile and docker-compose.yml and does what Docker would, with plain Linux
# tools, then checks the result:
#   1. build: the build stage's `cargo build` in a copy of exactly what its COPY lines
#      copy, then `strip`, as the Dockerfile does;
#   2. image: a Debian root file system from debootstrap (the FROM line's suite, minbase,
#      with the official image's apt sources), then the runtime stage's RUN lines run
#      inside it, then its COPY --from=build;
#   3. run, in network/PID/mount namespaces of its own (a container's): Postgres as the
#      compose file configures it (the machine's own server binaries, as `postgres`, on
#      127.0.0.1:5432 in the namespace, `postgres` resolving to it), PgBouncer in front of
#      it as compose's `pgbouncer` service runs it (Debian's, deploy/pgbouncer's settings,
#      on 6432, `pgbouncer` resolving to it), and the image's
#      ENTRYPOINT + CMD as its USER, as PID 1 of its own PID namespace, with the image's
#      ENV and the compose file's environment. Checks: /readyz answers 200 within the
#      HEALTHCHECK's start period and retries; the process has the USER's uid and gid and
#      is PID 1; a webhook is stored and applied, and /v1 serves it; the binary finds the
#      image's CA certificates (a self-signed TLS server is refused as UnknownIssuer, not
#      for want of roots); the HEALTHCHECK command exits 0 within its timeout; SIGTERM
#      stops the service within compose's stop_grace_period, exit 0, "shutdown complete"
#      logged, every log line JSON; the health check then fails.
#   Also: USER agrees with the image's /etc/passwd, compose's health check is the
#   Dockerfile's, and any instruction this script does not understand fails the check.
#
# Caches, between runs and outside the clone (PSYNC_CONTAINER_CACHE, default
# /var/cache/partnerstack-sync/container-check): the build's target directory, the
# debootstrapped root, and the root after the RUN lines (keyed by their text, like a
# Docker layer). Each run works on a fresh copy in a temporary directory, removed at the
# end; mounts live only in the namespaces, which end with the run. Every step has a time
# limit. Needs root, util-linux, and Debian's package mirror; installs debootstrap, curl,
# iproute2 and openssl with apt-get when missing.
#
# Usage: sudo .ci/container-check.sh        (from anywhere in the clone)
set -Eeuo pipefail

SCRIPT=$(realpath "$0")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
CACHE=${PSYNC_CONTAINER_CACHE:-/var/cache/partnerstack-sync/container-check}
MIRROR=${PSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PSYNC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BUILD_LIMIT=${PSYNC_CONTAINER_BUILD_LIMIT:-3600} # seconds; a cold release build is the long part
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin # debian images' ENV PATH

say() { printf 'container-check: %s\n' "$*"; }
die() {
  printf 'container-check: FAILED: %s\n' "$*" >&2
  exit 1
}
trap 'printf "container-check: FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR
now() { date +%s.%N; }
# True while process $1 runs (a zombie, exited but not yet waited for, does not count).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------
# Inside the namespaces: the script runs itself there (`__build`, `__run`; see below).
# ---------------------------------------------------------------------------------------

# A container's /dev, /proc and /dev/shm under $1, in the current (private) mount namespace.
container_mounts() {
  local root=$1
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t tmpfs -o nosuid,mode=755,size=64k dev "$root/dev"
  mknod -m 666 "$root/dev/null" c 1 3
  mknod -m 666 "$root/dev/zero" c 1 5
  mknod -m 666 "$root/dev/full" c 1 7
  mknod -m 666 "$root/dev/random" c 1 8
  mknod -m 666 "$root/dev/urandom" c 1 9
  mknod -m 666 "$root/dev/tty" c 5 0
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mkdir "$root/dev/shm" "$root/dev/pts"
  mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=64m shm "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts "$root/dev/pts"
  ln -s pts/ptmx "$root/dev/ptmx"
}

# `RUN` lines of the runtime stage: $1 the root, then each line's shell text.
inside_build() {
  local root=$1
  shift
  container_mounts "$root"
  local line
  for line in "$@"; do
    printf '    RUN %s\n' "$line"
    env -i PATH="$DEFAULT_PATH" HOME=/root unshare --root="$root" -- /bin/sh -c "$line" ||
      die "RUN failed inside the root: $line"
  done
}

# An HTTP request from inside the namespace; prints the status code, the body goes to $out.
http() {
  local method=$1 url=$2 out=$3
  shift 3
  curl -s -o "$out" -w '%{http_code}' --max-time 5 -X "$method" "$@" "$url" || true
}

# The run: everything here is in fresh network, PID, mount, UTS and IPC namespaces, and
# this shell is their PID 1: when it exits, the kernel ends whatever is still running.
# Arguments come through the environment (CHECK_*), set by step 3 below.
inside_run() {
  local work=$CHECK_WORK root=$CHECK_WORK/root pg_bin=$CHECK_PG_BIN
  local -a service_env entry health
  mapfile -t service_env <"$work/service.env"
  mapfile -t entry <"$work/entrypoint"
  mapfile -t health <"$work/healthcheck"

  ip link set lo up
  hostname partnerstack-sync
  container_mounts "$root"
  # Docker's /etc/hosts, with compose's network: the database by its service name.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\tpostgres\n127.0.0.1\tpgbouncer\n' \
    >"$root/etc/hosts"

  # Postgres as compose's `postgres` service configures it (user, password, database).
  local pgdata=$work/pg
  mkdir "$pgdata"
  chown postgres: "$pgdata"
  chmod 700 "$pgdata"
  printf '%s\n' "$CHECK_PG_PASSWORD" >"$work/pgpass"
  chown postgres: "$work/pgpass"
  local as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  "${as_postgres[@]}" "$pg_bin/initdb" -D "$pgdata" -U "$CHECK_PG_USER" --pwfile="$work/pgpass" \
    --auth=scram-sha-256 -E UTF8 --locale=C >"$work/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$work/initdb.log")"
  echo "CREATE DATABASE $CHECK_PG_DB;" | "${as_postgres[@]}" "$pg_bin/postgres" --single -D "$pgdata" \
    postgres >"$work/createdb.log" 2>&1 || die "creating database $CHECK_PG_DB failed: $(tail -5 "$work/createdb.log")"
  "${as_postgres[@]}" "$pg_bin/postgres" -D "$pgdata" -p 5432 -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories= -c fsync=off >"$work/postgres.log" 2>&1 &
  local pg_pid=$!

  for _ in $(seq 1 300); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 5432 && break
    alive "$pg_pid" || die "Postgres exited: $(tail -5 "$work/postgres.log")"
    sleep 0.1
  done
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 5432 || die "Postgres did not accept connections within 30 s"

  # PgBouncer as compose's `pgbouncer` service runs it: Debian's, with deploy/pgbouncer's
  # settings and the auth file its entrypoint writes, reaching Postgres by its service
  # name (127.0.0.1 here, outside the image's /etc/hosts).
  printf '"%s" "%s"\n' "$CHECK_PGB_USER" "$CHECK_PGB_PASSWORD" >"$work/userlist.txt"
  sed -e 's/host=postgres /host=127.0.0.1 /' -e "s|^auth_file = .*|auth_file = $work/userlist.txt|" \
    "$CHECK_PGB_INI" >"$work/pgbouncer.ini"
  chown postgres: "$work/userlist.txt" "$work/pgbouncer.ini"
  chmod 600 "$work/userlist.txt"
  "${as_postgres[@]}" pgbouncer --quiet "$work/pgbouncer.ini" >"$work/pgbouncer.log" 2>&1 &
  local pgb_pid=$!
  for _ in $(seq 1 100); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 6432 && break
    alive "$pgb_pid" || die "PgBouncer exited: $(tail -5 "$work/pgbouncer.log")"
    sleep 0.1
  done
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 6432 || die "PgBouncer did not accept connections within 10 s"
  say "  PgBouncer          transaction mode, as compose's pgbouncer service ($CHECK_PGB_INI)"

  # The container: ENTRYPOINT + CMD as USER, PID 1 of its own PID namespace, its own /proc.
  local as_user=(--setgid="$CHECK_GID" --setuid="$CHECK_UID")
  local started
  started=$(now)
  env -i "${service_env[@]}" unshare --pid --fork --kill-child --mount-proc --root="$root" \
    --wd="$CHECK_WORKDIR" "${as_user[@]}" -- "${entry[@]}" >"$work/service.log" 2>&1 &
  local unshare_pid=$!
  local service_pid=""
  for _ in $(seq 1 50); do
    service_pid=$(awk '{ print $1 }' "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null || true)
    [ -n "$service_pid" ] && break
    sleep 0.1
  done
  [ -n "$service_pid" ] || die "the service process did not start: $(tail -5 "$work/service.log")"

  local status=000 ready_in=""
  for _ in $(seq 1 $((CHECK_READY_LIMIT * 10))); do
    alive "$unshare_pid" ||
      die "the service exited during start-up; its log:"$'\n'"$(tail -20 "$work/service.log")"
    status=$(http GET http://127.0.0.1:8080/readyz "$work/readyz.body")
    if [ "$status" = 200 ]; then
      ready_in=$(since "$started")
      break
    fi
    sleep 0.1
  done
  [ "$status" != 000 ] || status="no answer"
  [ "$status" = 200 ] || die "/readyz: $status, not 200, within ${CHECK_READY_LIMIT}s (the HEALTHCHECK's start period and retries); log:"$'\n'"$(tail -20 "$work/service.log")"
  say "  /readyz            200 after ${ready_in}s"

  # Who and where the service runs: the image's user, PID 1 of its namespace.
  local uid gid nspid
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$service_pid/status")
  gid=$(awk '/^Gid:/ { print $2 }' "/proc/$service_pid/status")
  nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$service_pid/status")
  [ "$uid:$gid" = "$CHECK_UID:$CHECK_GID" ] || die "the service runs as $uid:$gid, not $CHECK_UID:$CHECK_GID"
  [ "$nspid" = 1 ] || die "the service is PID $nspid in its namespace, not 1"
  say "  process            uid $uid, gid $gid, PID 1 in its namespace"

  # A delivery stored and applied through the database, then served by /v1.
  status=$(http POST "http://127.0.0.1:8080/webhooks/partnerstack/$CHECK_WEBHOOK_TOKEN" "$work/hook.body" \
    -H 'content-type: application/json' --data '{"event":"customer.created","key":"cust_container_check"}')
  [ "$status" = 200 ] || die "the webhook answered $status: $(cat "$work/hook.body")"
  for _ in $(seq 1 100); do
    status=$(http GET http://127.0.0.1:8080/v1/customers/cust_container_check "$work/v1.body" \
      -H "authorization: Bearer $CHECK_API_TOKEN")
    [ "$status" = 200 ] && break
    sleep 0.1
  done
  [ "$status" = 200 ] || die "/v1/customers/cust_container_check answered $status after the webhook"
  say "  webhook + /v1      200, stored, applied and served"

  # TLS as the reconciler uses it: the binary must find the image's CA certificates. A
  # local server with a self-signed certificate is refused as signed by an unknown issuer
  # only by a client that loaded roots to compare it with.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1 || die "openssl could not make a certificate"
  openssl s_server -quiet -www -accept 127.0.0.1:8443 -cert "$work/tls.crt" -key "$work/tls.key" \
    >"$work/tls-server.log" 2>&1 </dev/null &
  local tls_pid=$!
  printf '[partnerstack]\nmax_attempts = 1\n' >"$root/tmp/tls-probe.toml"
  chmod 644 "$root/tmp/tls-probe.toml"
  local tls_status=0
  env -i "${service_env[@]}" PARTNERSTACK_BASE_URL=https://127.0.0.1:8443/api/v2 \
    PARTNERSTACK_PUBLIC_KEY=pk_tls_probe PARTNERSTACK_SECRET_KEY=sk_tls_probe \
    timeout 60 unshare --root="$root" --wd="$CHECK_WORKDIR" "${as_user[@]}" -- \
    "${entry[0]}" --config /tmp/tls-probe.toml reconcile --stream partnerships >"$work/tls-probe.log" 2>&1 ||
    tls_status=$?
  kill "$tls_pid"
  if ! grep -q 'UnknownIssuer' "$work/tls-probe.log"; then
    die "TLS from inside the image did not get as far as checking the certificate's issuer (exit $tls_status):"$'\n'"$(grep -v '^{' "$work/tls-probe.log" | tail -5)"
  fi
  say "  TLS                CA certificates found (a self-signed server is refused: UnknownIssuer)"

  # The health check, as Docker runs it: the image's env and user, within its timeout.
  local hc_started hc_status=0
  hc_started=$(now)
  env -i "${service_env[@]}" timeout "$CHECK_HEALTH_TIMEOUT" unshare --root="$root" --wd="$CHECK_WORKDIR" \
    "${as_user[@]}" -- "${health[@]}" >"$work/health.log" 2>&1 || hc_status=$?
  [ "$hc_status" = 0 ] || die "the HEALTHCHECK (${health[*]}) exited $hc_status: $(tail -5 "$work/health.log")"
  say "  healthcheck        exit 0 in $(since "$hc_started")s (limit ${CHECK_HEALTH_TIMEOUT}s)"

  # docker stop: SIGTERM to PID 1, SIGKILL after the grace period.
  local stop_started exit_status=""
  stop_started=$(now)
  kill -TERM "$service_pid"
  for _ in $(seq 1 $((CHECK_STOP_LIMIT * 10))); do
    if ! alive "$unshare_pid"; then
      exit_status=0
      wait "$unshare_pid" || exit_status=$?
      break
    fi
    sleep 0.1
  done
  [ -n "$exit_status" ] || die "the service did not stop within ${CHECK_STOP_LIMIT}s of SIGTERM (compose's stop_grace_period)"
  [ "$exit_status" = 0 ] || die "the service exited $exit_status after SIGTERM; log:"$'\n'"$(tail -20 "$work/service.log")"
  grep -q 'shutdown complete' "$work/service.log" || die "no \"shutdown complete\" in the service's log"
  say "  SIGTERM            exit 0 in $(since "$stop_started")s, \"shutdown complete\" logged"
  if grep -qv '^{' "$work/service.log"; then
    die "a log line is not JSON (PSYNC_LOG_FORMAT=json): $(grep -v '^{' "$work/service.log" | head -3)"
  fi

  hc_status=0
  env -i "${service_env[@]}" timeout "$CHECK_HEALTH_TIMEOUT" unshare --root="$root" --wd="$CHECK_WORKDIR" \
    "${as_user[@]}" -- "${health[@]}" >"$work/health-after.log" 2>&1 || hc_status=$?
  [ "$hc_status" != 0 ] || die "the HEALTHCHECK passed with the service stopped"
  say "  healthcheck        exit $hc_status once stopped, as it should"

  kill -INT "$pg_pid" # fast shutdown
  for _ in $(seq 1 200); do
    alive "$pg_pid" || break
    sleep 0.1
  done
}

case "${1:-}" in
__build)
  shift
  inside_build "$@"
  exit 0
  ;;
__run)
  inside_run
  exit 0
  ;;
"") ;;
*) die "usage: $0 (no arguments)" ;;
esac

# ---------------------------------------------------------------------------------------
# Outside: prerequisites, reading the Dockerfile and compose file, build, image, run.
# ---------------------------------------------------------------------------------------

total_started=$(now)
[ "$(id -u)" = 0 ] || die "run as root (it builds a root file system and uses namespaces)"

need_packages=()
command -v debootstrap >/dev/null 2>&1 || need_packages+=(debootstrap)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v pgbouncer >/dev/null 2>&1 || need_packages+=(pgbouncer)
if [ ${#need_packages[@]} -gt 0 ]; then
  say "installing ${need_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
fi
for tool in unshare mknod setpriv flock strip cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
id postgres >/dev/null 2>&1 || die "there is no postgres user to run the test Postgres as"
pg_bin=""
mapfile -t versioned < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
for dir in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" \
  "$(pg_config --bindir 2>/dev/null || true)" "${versioned[@]}"; do
  if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_isready" ]; then
    pg_bin=$dir
    break
  fi
done
[ -n "$pg_bin" ] || die "PostgreSQL server binaries not found (apt-get install postgresql)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 3600 9 || die "another container check holds $CACHE/.lock"

# --- The Dockerfile, as Docker reads it: continuation lines joined, comments dropped. ---
mapfile -t instructions < <(awk '
  /^[[:space:]]*#/ { next }
  { sub(/[[:space:]]+$/, "") }
  /\\$/ { sub(/\\$/, ""); buf = buf $0 " "; next }
  { line = buf $0; buf = ""; gsub(/[[:space:]]+/, " ", line); sub(/^ /, "", line); if (line != "") print line }
' "$REPO/Dockerfile")

# The words of an exec form (a JSON array of plain strings) into the array named $2.
exec_form() {
  local json=$1
  local -n words=$2
  [[ $json =~ ^\[\ *\"[^\\]*\"\ *\]$ ]] || die "expected an exec form [\"...\"] of plain strings, got: $json"
  mapfile -t words < <(grep -o '"[^"]*"' <<<"$json" | sed 's/^"//; s/"$//')
}

stage="" build_run="" runtime_from=""
health_cmd=() entry_words=() cmd_words=() compose_health_cmd=()
build_copies=() runtime_runs=() runtime_env=() binary_copy=""
user="" workdir="/" entrypoint="" cmd="" healthcheck=""
for ins in "${instructions[@]}"; do
  keyword=${ins%% *}
  rest=${ins#* }
  case "$keyword" in
  FROM)
    if [[ $rest =~ ^([^ ]+)\ [Aa][Ss]\ ([^ ]+)$ ]]; then
      stage=${BASH_REMATCH[2]}
    else
      stage=runtime
      runtime_from=$rest
    fi
    ;;
  WORKDIR) [ "$stage" != runtime ] || workdir=$rest ;; # the build's is the context copy below
  COPY)
    if [ "$stage" = runtime ]; then
      [[ $rest =~ ^--from=build\ ([^ ]+)\ ([^ ]+)$ ]] || die "runtime stage: unsupported COPY $rest"
      [ -z "$binary_copy" ] || die "runtime stage: more than one COPY --from=build"
      binary_copy="${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
    else
      [[ $rest != --* && ${rest##* } != /* ]] ||
        die "build stage: only COPY of context paths to paths relative to WORKDIR is supported: $rest"
      build_copies+=("$rest")
    fi
    ;;
  RUN)
    if [ "$stage" = runtime ]; then
      [[ $rest != \[* ]] || die "runtime stage: exec-form RUN is not supported"
      runtime_runs+=("$rest")
    else
      build_run=$rest
    fi
    ;;
  ENV)
    [ "$stage" = runtime ] || die "build stage: ENV is not supported by this check"
    for pair in $rest; do
      [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*=[^\"\']*$ ]] || die "ENV: only KEY=value pairs are supported: $pair"
      runtime_env+=("$pair")
    done
    ;;
  USER) user=$rest ;;
  EXPOSE) ;;
  HEALTHCHECK) healthcheck=$rest ;;
  ENTRYPOINT) entrypoint=$rest ;;
  CMD) cmd=$rest ;;
  *) die "the Dockerfile uses $keyword, which this check does not know yet: teach it" ;;
  esac
done
[[ $runtime_from =~ ^debian:([a-z]+)-slim$ ]] || die "the runtime stage is FROM $runtime_from, not debian:<suite>-slim"
suite=${BASH_REMATCH[1]}
[ -n "$binary_copy" ] || die "the runtime stage copies no binary from the build stage"
read -r binary_src binary_dst <<<"$binary_copy"
[[ $build_run =~ (cargo\ build[^&]*[^&\ ]) ]] || die "the build stage runs no cargo build"
read -r -a cargo_build <<<"${BASH_REMATCH[1]}"
[[ $build_run =~ cp\ target/release/([A-Za-z0-9_-]+)\ $binary_src ]] ||
  die "the build stage does not copy a target/release binary to $binary_src"
binary_name=${BASH_REMATCH[1]}
strip_binary=false
[[ $build_run == *"strip $binary_src"* ]] && strip_binary=true
[ -n "$user" ] || die "the runtime stage sets no USER: it would run as root"
[[ $healthcheck =~ ^(.*)CMD\ (\[.*\])$ ]] || die "HEALTHCHECK must be CMD in exec form: $healthcheck"
health_options=${BASH_REMATCH[1]}
exec_form "${BASH_REMATCH[2]}" health_cmd
option() { # a HEALTHCHECK option in seconds, e.g. option timeout 30
  local value
  value=$(grep -o -- "--$1=[0-9]*s" <<<"$health_options" | sed 's/.*=//; s/s$//' || true)
  echo "${value:-$2}"
}
health_timeout=$(option timeout 30)
health_ready_limit=$(($(option start-period 0) + $(option interval 30) * $(option retries 3)))
exec_form "$entrypoint" entry_words
exec_form "$cmd" cmd_words
entry_cmd=("${entry_words[@]}" "${cmd_words[@]}")

# --- docker-compose.yml: the environment of a service, ${VAR:-default} expanded. ---
compose_environment() {
  awk -v want="$1" '
    /^  [A-Za-z0-9_.-]+:$/ { svc = $1; sub(/:$/, "", svc); inenv = 0; next }
    /^[^ ]/ { svc = ""; inenv = 0 }
    svc == want && /^    environment:$/ { inenv = 1; next }
    inenv && /^      [A-Za-z_][A-Za-z0-9_]*: / { sub(/^      /, ""); print; next }
    inenv && !/^      / { inenv = 0 }
  ' "$REPO/docker-compose.yml"
}
declare -A shell_env=( # what the person running `docker compose up` exports
  [PSYNC_WEBHOOK_TOKENS]=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  [PSYNC_API_TOKENS]=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
)
expand() {
  local v=$1 out="" name op arg val
  while [[ $v =~ ^([^$]*)\$\{([A-Za-z_][A-Za-z0-9_]*)(:[-?])?([^}]*)\}(.*)$ ]]; do
    out+=${BASH_REMATCH[1]}
    name=${BASH_REMATCH[2]} op=${BASH_REMATCH[3]} arg=${BASH_REMATCH[4]} v=${BASH_REMATCH[5]}
    val=${shell_env[$name]-}
    case "$op" in
    :-) [ -n "$val" ] || val=$arg ;;
    :\?) [ -n "$val" ] || die "docker-compose.yml requires $name: $arg" ;;
    esac
    out+=$val
  done
  [[ $v != *'$'* ]] || die "unsupported substitution in docker-compose.yml: $1"
  printf '%s' "$out$v"
}
compose_value() { # service key: the expanded value
  local line
  line=$(compose_environment "$1" | grep "^$2: " || true)
  [ -n "$line" ] || die "docker-compose.yml: service $1 sets no $2"
  line=${line#*: }
  line=${line#\"} && line=${line%\"}
  expand "$line"
}
pg_user=$(compose_value postgres POSTGRES_USER)
pg_password=$(compose_value postgres POSTGRES_PASSWORD)
pg_db=$(compose_value postgres POSTGRES_DB)
pgb_user=$(compose_value pgbouncer PGBOUNCER_USER)
pgb_password=$(compose_value pgbouncer PGBOUNCER_PASSWORD)
pgb_build=$(awk '/^  pgbouncer:$/ { s = 1; next } /^  [^ ]/ { s = 0 }
  s && /^    build: / { print $2 }' "$REPO/docker-compose.yml")
pgb_ini=$REPO/$pgb_build/pgbouncer.ini
[ -f "$pgb_ini" ] || die "docker-compose.yml: the pgbouncer service's build ($pgb_build) has no pgbouncer.ini"
grep -q '^COPY pgbouncer.ini /etc/pgbouncer/pgbouncer.ini$' "$REPO/$pgb_build/Dockerfile" ||
  die "$pgb_build/Dockerfile does not install its pgbouncer.ini"
compose_env=()
while IFS= read -r line; do
  key=${line%%: *} value=${line#*: }
  value=${value#\"} && value=${value%\"}
  compose_env+=("$key=$(expand "$value")")
done < <(compose_environment partnerstack-sync)
[ ${#compose_env[@]} -gt 0 ] || die "docker-compose.yml: no environment for partnerstack-sync"
compose_health=$(awk '/^  partnerstack-sync:$/ { s = 1; next } /^  [^ ]/ { s = 0 }
  s && /^      test: / { sub(/^      test: /, ""); print }' "$REPO/docker-compose.yml")
exec_form "$compose_health" compose_health_cmd
[ "${compose_health_cmd[0]}" = CMD ] || die "compose's health check is not [\"CMD\", ...]: $compose_health"
[ "${compose_health_cmd[*]:1}" = "${health_cmd[*]}" ] ||
  die "compose's health check (${compose_health_cmd[*]:1}) differs from the Dockerfile's (${health_cmd[*]})"
grace=$(awk '/^  partnerstack-sync:$/ { s = 1; next } /^  [^ ]/ { s = 0 }
  s && /^    stop_grace_period: / { print $2 }' "$REPO/docker-compose.yml")
[[ $grace =~ ^([0-9]+)s$ ]] || die "compose's stop_grace_period is not in seconds: '$grace'"
stop_limit=${BASH_REMATCH[1]}

say "Dockerfile: FROM $runtime_from, ${#runtime_runs[@]} RUN, USER $user, ${entry_cmd[*]}; compose: ${#compose_env[@]} variables"

# --- 1. The binary, built the way the build stage builds it. ---
step_started=$(now)
context=$CACHE/context
rm -rf "$context"
mkdir -p "$context"
for copy in "${build_copies[@]}"; do
  read -r -a words <<<"$copy"
  dest=${words[-1]}
  unset 'words[-1]'
  if [[ $dest == */ ]]; then
    mkdir -p "$context/$dest"
    for src in "${words[@]}"; do cp -a "$REPO/$src" "$context/$dest"; done
  else
    [ ${#words[@]} = 1 ] || die "COPY of several sources to $dest, which is not a directory"
    cp -a "$REPO/${words[0]}" "$context/$dest"
  fi
done
if [ -f "$REPO/.dockerignore" ]; then # what Docker leaves out of the context
  while IFS= read -r pattern; do
    case "$pattern" in
    '' | '#'*) continue ;;
    '!'*) die ".dockerignore exceptions (!) are not supported: $pattern" ;;
    esac
    (cd "$context" && shopt -s nullglob && for match in ${pattern#/}; do rm -rf "$match"; done)
  done <"$REPO/.dockerignore"
fi
say "build: ${cargo_build[*]} (context: what the build stage COPYs, less .dockerignore)"
(cd "$context" && CARGO_TARGET_DIR=$CACHE/target timeout "$BUILD_LIMIT" "${cargo_build[@]}") >"$CACHE/build.log" 2>&1 ||
  die "the build stage's cargo build failed (or took over ${BUILD_LIMIT}s); the end of $CACHE/build.log:"$'\n'"$(tail -30 "$CACHE/build.log")"
build_secs=$(since "$step_started")

work=$(mktemp -d /tmp/psync-container-check.XXXXXX)
chmod 711 "$work" # the test Postgres runs as `postgres` below it
cleanup() {
  # Mounts exist only inside the namespaces, which are gone once their PID 1 is; refuse
  # to delete through one regardless.
  if grep -q " $work" /proc/self/mountinfo; then
    say "leaving $work: something is still mounted under it"
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
cp "$CACHE/target/release/$binary_name" "$work/binary"
$strip_binary && strip "$work/binary"
# The image is built without the `sim` feature: no stand-in, no demo, no /admin routes.
if "$work/binary" --help | grep -qwE 'simulate|demo'; then
  die "the image's binary has the stand-in's commands (simulate, demo): build it with --no-default-features"
fi
binary_size=$(du -h "$work/binary" | cut -f1)

# --- 2. The image: debootstrapped FROM, then the runtime stage's RUN lines. ---
rootfs=$CACHE/rootfs
mkdir -p "$rootfs"
base=$rootfs/$suite-minbase
step_started=$(now)
base_note=cached
if [ ! -d "$base" ]; then # each root is complete once renamed from .tmp
  base_note=built
  rm -rf "$base" "$base.tmp"
  say "image: debootstrap --variant=minbase $suite (once; cached in $base)"
  timeout --kill-after=10 1200 unshare --mount --pid --fork --kill-child --mount-proc \
    debootstrap --variant=minbase "$suite" "$base.tmp" "$MIRROR" >"$rootfs/debootstrap.log" 2>&1 ||
    die "debootstrap failed; the end of $rootfs/debootstrap.log:"$'\n'"$(tail -20 "$rootfs/debootstrap.log")"
  # The official image's apt sources, so its RUN lines fetch what they would there.
  rm -f "$base.tmp/etc/apt/sources.list"
  cat >"$base.tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$base.tmp"/var/cache/apt/archives/*.deb "$base.tmp"/var/lib/apt/lists/*
  mv "$base.tmp" "$base"
fi
base_secs=$(since "$step_started")

step_started=$(now)
layer_key=$({
  echo "$suite"
  printf '%s\n' "${runtime_runs[@]}"
} | sha256sum | cut -c1-12)
layer=$rootfs/layer-$layer_key
layer_note=cached
if [ ! -d "$layer" ]; then
  layer_note=built
  rm -rf "$layer.tmp"
  cp -a "$base" "$layer.tmp"
  say "image: the runtime stage's RUN lines (cached in $layer)"
  cp /etc/resolv.conf "$layer.tmp/etc/resolv.conf" # what `docker build` provides
  timeout --kill-after=10 900 unshare --mount --pid --fork --kill-child \
    bash "$SCRIPT" __build "$layer.tmp" "${runtime_runs[@]}" >"$rootfs/layer.log" 2>&1 ||
    die "the runtime stage's RUN lines failed; the end of $rootfs/layer.log:"$'\n'"$(tail -30 "$rootfs/layer.log")"
  : >"$layer.tmp/etc/resolv.conf"
  mv "$layer.tmp" "$layer"
  for old in "$rootfs"/layer-*; do # earlier versions of the stage
    [ "$old" = "$layer" ] || rm -rf --one-file-system "$old"
  done
fi
layer_secs=$(since "$step_started")

root=$work/root
cp -a "$layer" "$root"
install -D -m 755 -o root -g root "$work/binary" "$root$binary_dst"

# USER: numeric or named, resolved in the image; the passwd entry must agree with it.
passwd_field() { awk -F: -v k="$1" -v col="$2" '$1 == k || $3 == k { print $col; exit }' "$root/etc/passwd"; }
group_id() { awk -F: -v k="$1" '$1 == k || $3 == k { print $3; exit }' "$root/etc/group"; }
user_part=${user%%:*}
uid=$(passwd_field "$user_part" 3)
[ -n "$uid" ] || die "USER $user: no such user in the image's /etc/passwd"
if [[ $user == *:* ]]; then
  gid=$(group_id "${user#*:}")
  # Docker would run with a numeric gid that names no group; a mistake all the same.
  [ -n "$gid" ] || die "USER $user: the image has no group ${user#*:} (its user $uid has gid $(passwd_field "$uid" 4))"
else
  gid=$(passwd_field "$user_part" 4)
fi
[ "$(passwd_field "$uid" 4)" = "$gid" ] ||
  die "USER $user runs with gid $gid, but the image's /etc/passwd gives user $uid gid $(passwd_field "$uid" 4)"
[ "$uid" != 0 ] || die "USER $user is root"
home=$(passwd_field "$uid" 6)
[ -d "$root$home" ] || home=/
ca_bundle=$root/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || die "no CA certificates in the image (${ca_bundle#"$root"}): TLS to PartnerStack would fail"
ca_count=$(grep -c 'BEGIN CERTIFICATE' "$ca_bundle")

# The container's environment: the image's ENV, then compose's environment; Docker adds
# HOSTNAME and HOME.
service_env=("PATH=$DEFAULT_PATH" "HOSTNAME=partnerstack-sync" "HOME=$home" "${runtime_env[@]}" "${compose_env[@]}")
printf '%s\n' "${service_env[@]}" >"$work/service.env"
printf '%s\n' "${entry_cmd[@]}" >"$work/entrypoint"
printf '%s\n' "${health_cmd[@]}" >"$work/healthcheck"
webhook_token=${shell_env[PSYNC_WEBHOOK_TOKENS]}
api_token=${shell_env[PSYNC_API_TOKENS]}

# --- 3. Run it, in namespaces of its own. ---
say "run: ${entry_cmd[*]} as $uid:$gid, Postgres as compose's service (user $pg_user, database $pg_db)"
step_started=$(now)
CHECK_WORK=$work CHECK_PG_BIN=$pg_bin CHECK_PG_USER=$pg_user CHECK_PG_PASSWORD=$pg_password \
  CHECK_PG_DB=$pg_db CHECK_PGB_USER=$pgb_user CHECK_PGB_PASSWORD=$pgb_password CHECK_PGB_INI=$pgb_ini \
  CHECK_UID=$uid CHECK_GID=$gid CHECK_WORKDIR=$workdir \
  CHECK_READY_LIMIT=$health_ready_limit CHECK_HEALTH_TIMEOUT=$health_timeout CHECK_STOP_LIMIT=$stop_limit \
  CHECK_WEBHOOK_TOKEN=$webhook_token CHECK_API_TOKEN=$api_token \
  timeout --kill-after=10 $((health_ready_limit + stop_limit + 120)) \
  unshare --net --pid --mount --uts --ipc --fork --kill-child --mount-proc bash "$SCRIPT" __run ||
  die "the run failed (service log: see above)"
run_secs=$(since "$step_started")
base_size=$(du -sh "$base" | cut -f1)
cleanup
trap - EXIT

cat <<EOF
container-check: passed in $(since "$total_started")s
  binary   ${build_secs}s   ${cargo_build[*]} in a copy of the build context, stripped: $binary_size
  base     ${base_secs}s   $base_note: debootstrap --variant=minbase $suite ($base_size)
  layer    ${layer_secs}s   $layer_note: ${#runtime_runs[@]} RUN line(s); $ca_count CA certificates
  run      ${run_secs}s   Postgres, service start, checks, stop (namespaces torn down)
EOF
