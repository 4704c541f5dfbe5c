#!/usr/bin/env bash
# Installs the Aqueduct hub on this machine as a systemd service:
#   - the system user and group `aqueduct` (no login, no home of its own);
#   - aqueduct-hub (and aq, when built) in /usr/local/bin;
#   - the data directory /var/lib/aqueduct-hub (mode 0750, the hub's own), where
#     `aqueduct-hub init` creates the CAs, the hub's certificate, the admin bundle and the
#     database (an existing hub's data directory is kept: a new CA would invalidate every
#     region's certificate);
#   - the config /etc/aqueduct/hub.toml (hub.example.toml, every key commented, with the
#     listen address given; an existing one is kept) - DATA_DIR/hub.toml links to it, so
#     `aqueduct-hub serve` finds it without --config;
#   - the unit /etc/systemd/system/aqueduct-hub.service, enabled (not started).
#
# usage: install.sh [--root DIR] [--bin-dir DIR] [--listen IP:PORT] [--host NAME]... [--no-enable]
#   --root DIR      install into DIR instead of / (a chroot or image being built, or a test's
#                   throwaway root: DIR/etc/passwd and DIR/etc/group must exist). systemd is
#                   only asked to enable the unit inside DIR (`systemctl --root`), never to
#                   start anything.
#   --bin-dir DIR   where aqueduct-hub (and aq) are; default: the workspace's target/release
#                   (`cargo build --release -p aqueduct-hub -p aqueduct-cli`).
#   --listen ADDR   the API's address (default 0.0.0.0:7443).
#   --host NAME     a DNS name or IP address spokes and admins reach the hub at; the hub's
#                   certificate is valid for it (repeatable; default: `hostname -f`).
#   --no-enable     install the unit without enabling it.
# Runs as root. The data directory is fixed: the unit's ReadWritePaths= names it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root=""
bin_dir="$here/../../target/release"
listen="0.0.0.0:7443"
hosts=()
enable=1

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
        --listen) listen="${2:?--listen needs IP:PORT}"; shift 2 ;;
        --host) hosts+=("${2:?--host needs a name}"); shift 2 ;;
        --no-enable) enable=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run me as root (sudo $0 ...): I create a system user and chown its data"
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root="$(cd "$root" && pwd)"
    [ -f "$root/etc/passwd" ] && [ -f "$root/etc/group" ] \
        || die "--root $root has no etc/passwd or etc/group: it must be a system root"
fi
hub_bin="$bin_dir/aqueduct-hub"
[ -x "$hub_bin" ] || die "$hub_bin is missing: build it (cargo build --release -p aqueduct-hub) or pass --bin-dir"
if [ ${#hosts[@]} -eq 0 ]; then
    hosts=("$(hostname -f 2>/dev/null || hostname)")
fi

user=aqueduct
data_dir=/var/lib/aqueduct-hub
config=/etc/aqueduct/hub.toml
unit=/etc/systemd/system/aqueduct-hub.service

# 1. The user: a system account with no shell and no home of its own.
if ! grep -q "^$user:" "$root/etc/passwd"; then
    root_args=()
    [ -n "$root" ] && root_args=(--root "$root")
    useradd "${root_args[@]}" --system --user-group --home-dir "$data_dir" --no-create-home \
        --shell /usr/sbin/nologin --comment "Aqueduct hub" "$user"
    echo "created system user $user"
else
    echo "system user $user exists"
fi
# Numeric ids from the target's own files: inside --root, the host's names mean nothing.
uid="$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd")"
gid="$(awk -F: -v u="$user" '$1 == u { print $4 }' "$root/etc/passwd")"

# 2. Binaries.
install -d -m 0755 "$root/usr/local/bin" "$root/etc/aqueduct" "$root/etc/systemd/system"
install -m 0755 "$hub_bin" "$root/usr/local/bin/aqueduct-hub"
if [ -x "$bin_dir/aq" ]; then
    install -m 0755 "$bin_dir/aq" "$root/usr/local/bin/aq"
fi

# 3. The data directory and the hub's PKI and database.
install -d -m 0750 -o "$uid" -g "$gid" "$root$data_dir"
# hub.toml (the link made below) marks a finished install. Without it, init runs: it also
# completes a hub that an interrupted install left, keeping the CA and database it made.
if [ -L "$root$data_dir/hub.toml" ] || [ -e "$root$data_dir/hub.toml" ]; then
    echo "$data_dir holds a hub already: kept (its CA, certificates and database)"
else
    host_args=()
    for h in "${hosts[@]}"; do host_args+=(--host "$h"); done
    "$hub_bin" init --data-dir "$root$data_dir" --listen "$listen" "${host_args[@]}" >/dev/null
    # init writes DATA_DIR/hub.toml with DATA_DIR as it saw it (under --root, the wrong
    # absolute path); the installed config below replaces it.
    rm -f "$root$data_dir/hub.toml"
    echo "created the hub's CAs, certificate (for ${hosts[*]}, localhost, 127.0.0.1), admin bundle and database in $data_dir"
    echo "move the root CA's key $data_dir/keep-offline/root-ca.key off this machine: the hub does not need it"
fi
ln -sfn "$config" "$root$data_dir/hub.toml"
chown -hR "$uid:$gid" "$root$data_dir"

# 4. The config: the documented example with this listen address; the snapshot parallelism
# left to its default (the number of cores).
if [ -e "$root$config" ]; then
    echo "$config exists: kept"
else
    sed -e "s|^listen = .*|listen = \"$listen\"|" \
        -e "s|^data_dir = .*|data_dir = \"$data_dir\"|" \
        -e "s|^parallelism = |# parallelism = |" \
        "$here/hub.example.toml" >"$root$config.tmp"
    install -m 0640 -o 0 -g "$gid" "$root$config.tmp" "$root$config"
    rm -f "$root$config.tmp"
    echo "installed $config"
fi

# 5. The unit, enabled at boot.
install -m 0644 "$here/aqueduct-hub.service" "$root$unit"
echo "installed $unit"
if [ "$enable" = 1 ]; then
    if [ -n "$root" ]; then
        if command -v systemctl >/dev/null 2>&1; then
            systemctl --root="$root" --quiet enable aqueduct-hub.service
        else
            # What `systemctl enable` does for WantedBy=multi-user.target.
            install -d -m 0755 "$root/etc/systemd/system/multi-user.target.wants"
            ln -sfn "$unit" "$root/etc/systemd/system/multi-user.target.wants/aqueduct-hub.service"
        fi
    else
        systemctl daemon-reload
        systemctl --quiet enable aqueduct-hub.service
    fi
    echo "enabled aqueduct-hub.service"
fi

cat <<EOF

Next:
  systemctl start aqueduct-hub && journalctl -u aqueduct-hub -f
  export AQ_CONFIG=$data_dir/admin/aq.toml     # as root; copy admin/ to the admins who run aq
  aq region add REGION --rate 100MiB/s --out ./REGION-credentials
Spokes reach the hub at https://${hosts[0]}:${listen##*:} (the certificate names ${hosts[*]}).
EOF
