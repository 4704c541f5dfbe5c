# One PostgreSQL server for a whole test run (sourced by scripts/test).
#
#   postgres_start   initdb into a temporary directory, start the server on a free port of
#                    127.0.0.1 (as the user postgres, or nobody, when run as root: PostgreSQL
#                    refuses root), password authentication (scram-sha-256), and export
#                    AQ_TEST_POSTGRES (the admin URL, no password in it) and
#                    AQ_TEST_POSTGRES_PASSWORD. Each test then only creates a database
#                    (aqueduct_testkit::postgres). Stops the run if the server cannot start.
#   postgres_stop    stop it (immediate shutdown) and remove its directory.
#
# Tests run without it start a private server each (slower, same results).

# The directory of initdb, pg_ctl and postgres: PATH first, then the highest version under
# /usr/lib/postgresql. Prints nothing when they are missing.
postgres_bin_dir() {
    local initdb dir
    if initdb=$(command -v initdb 2>/dev/null) && dir=$(dirname "$(readlink -f "$initdb")") \
        && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return
        fi
    done
}

postgres_start() {
    local bin user port password
    bin=$(postgres_bin_dir)
    if [ -z "$bin" ]; then
        echo "PostgreSQL's server programs (initdb, pg_ctl, postgres) are missing" >&2
        return 1
    fi
    AQ_POSTGRES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aq-postgres-run.XXXXXX")
    AQ_POSTGRES_AS=()
    if [ "$(id -u)" = 0 ]; then
        user=postgres
        id -u postgres >/dev/null 2>&1 || user=nobody
        chown "$user" "$AQ_POSTGRES_DIR"
        AQ_POSTGRES_AS=(runuser -u "$user" --)
    fi
    password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    (umask 077 && echo "$password" >"$AQ_POSTGRES_DIR/pwfile")
    if [ "$(id -u)" = 0 ]; then
        chown "$user" "$AQ_POSTGRES_DIR/pwfile"
    fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ! (cd "$AQ_POSTGRES_DIR" \
        && "${AQ_POSTGRES_AS[@]}" "$bin/initdb" -D "$AQ_POSTGRES_DIR/data" -U aqueduct -A scram-sha-256 \
            --pwfile="$AQ_POSTGRES_DIR/pwfile" -E UTF8 --no-locale --no-sync >"$AQ_POSTGRES_DIR/initdb.log" 2>&1 \
        && "${AQ_POSTGRES_AS[@]}" "$bin/pg_ctl" start -w -t 60 -D "$AQ_POSTGRES_DIR/data" \
            -l "$AQ_POSTGRES_DIR/postgres.log" -o "-p $port -k $AQ_POSTGRES_DIR -c listen_addresses=127.0.0.1 \
            -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null); then
        echo "the tests' PostgreSQL server did not start:" >&2
        cat "$AQ_POSTGRES_DIR"/*.log >&2
        return 1
    fi
    AQ_POSTGRES_BIN=$bin
    export AQ_TEST_POSTGRES="postgres://aqueduct@127.0.0.1:$port/postgres"
    export AQ_TEST_POSTGRES_PASSWORD="$password"
    echo "PostgreSQL for the tests: $AQ_TEST_POSTGRES ($bin, data in $AQ_POSTGRES_DIR)" >&2
}

postgres_stop() {
    [ -n "${AQ_POSTGRES_DIR:-}" ] || return 0
    if [ -n "${AQ_POSTGRES_BIN:-}" ] && [ -f "$AQ_POSTGRES_DIR/data/postmaster.pid" ]; then
        (cd "$AQ_POSTGRES_DIR" && "${AQ_POSTGRES_AS[@]}" "$AQ_POSTGRES_BIN/pg_ctl" stop -m immediate -w \
            -D "$AQ_POSTGRES_DIR/data" >/dev/null) || true
    fi
    rm -rf "$AQ_POSTGRES_DIR"
    AQ_POSTGRES_DIR=
}
