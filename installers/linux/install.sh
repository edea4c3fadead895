#!/usr/bin/env bash
# Install PeerDesk for this user (no root): a virtualenv (or pipx), a menu entry, the
# peerdesk:// link handler (x-scheme-handler/peerdesk through xdg-mime), optionally
# autostart at login, and an uninstall script that removes exactly what was added.
#
#   installers/linux/install.sh [--autostart] [--pipx] [--source SRC] [--system-site-packages]
#                               [--pip-arg ARG]...
#
#   --source SRC     what pip installs: a checkout, a wheel, or a requirement
#                    (default: the checkout this script is in, else "peerdesk")
#   --pipx           install with pipx instead of a private virtualenv
#   --autostart      start the PeerDesk agent at login (~/.config/autostart)
#   --system-site-packages
#                    let the virtualenv see the system's packages (offline installs)
#   --pip-arg ARG    pass ARG to pip (repeat: --pip-arg --no-deps --pip-arg --no-index)
#
# Uninstall: ~/.local/share/peerdesk-agent/uninstall.sh (the path is printed at the end).
# Environment: PYTHON (default python3), XDG_DATA_HOME, XDG_CONFIG_HOME.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
config_home="${XDG_CONFIG_HOME:-$HOME/.config}"
app_dir="$data_home/peerdesk-agent"
apps_dir="$data_home/applications"
bin_dir="$HOME/.local/bin"
autostart_dir="$config_home/autostart"
manifest="$app_dir/manifest"
python="${PYTHON:-python3}"

source_spec=""
use_pipx=0
autostart=0
venv_args=()
pip_args=()
die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --source) [ $# -ge 2 ] || die "--source needs a value"; source_spec="$2"; shift 2 ;;
        --pipx) use_pipx=1; shift ;;
        --autostart) autostart=1; shift ;;
        --system-site-packages) venv_args+=(--system-site-packages); shift ;;
        --pip-arg) [ $# -ge 2 ] || die "--pip-arg needs a value"; pip_args+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ -z "$source_spec" ]; then
    if [ -f "$here/../../pyproject.toml" ]; then
        source_spec="$(cd "$here/../.." && pwd)"
    else
        source_spec="peerdesk"
    fi
fi
[ -e "$manifest" ] && die "PeerDesk is already installed; run $app_dir/uninstall.sh first"
if [ "$use_pipx" = 1 ]; then command -v pipx >/dev/null || die "pipx is not installed (drop --pipx)"; fi
command -v xdg-mime >/dev/null || die "xdg-mime is missing: install xdg-utils"
case "$HOME$data_home$config_home" in  # they would need escaping in a desktop file's Exec
    *[\"\`\$\\%]*) die "paths with quotes, backslashes, %, \$ or \` are not supported" ;;
esac

# Every path this script creates goes into the manifest as it is created, so the
# uninstaller (and a failed install) removes exactly that, newest first.
made_dirs=()
mkdir_tracked() {
    local d="$1" missing=()
    while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d="$(dirname "$d")"; done
    for d in "${missing[@]}"; do mkdir "$d"; made_dirs+=("$d"); done
}
mkdir_tracked "$app_dir"
for d in "${made_dirs[@]}"; do echo "dir - $d" >> "$manifest"; done
made_dirs=()
record_dirs() { for d in "${made_dirs[@]}"; do echo "dir - $d" >> "$manifest"; done; made_dirs=(); }
cleanup_on_failure() {
    echo "install.sh: failed; undoing what was installed" >&2
    bash "$here/uninstall.sh" --manifest "$manifest" >&2 || true
}
trap cleanup_on_failure ERR

if [ "$use_pipx" = 1 ]; then
    pipx install --force "${pip_args[@]/#/--pip-args=}" "$source_spec"
    echo "pipx - peerdesk" >> "$manifest"
    exe="$(pipx environment --value PIPX_BIN_DIR)/peerdesk"
else
    echo "tree - $app_dir/venv" >> "$manifest"
    "$python" -m venv "${venv_args[@]}" "$app_dir/venv"
    "$app_dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${pip_args[@]}" "$source_spec"
    exe="$app_dir/venv/bin/peerdesk"
    mkdir_tracked "$bin_dir"; record_dirs
    if [ ! -e "$bin_dir/peerdesk" ]; then
        ln -s "$exe" "$bin_dir/peerdesk"
        echo "file - $bin_dir/peerdesk" >> "$manifest"
    fi
fi
"$exe" --version >/dev/null

cp "$here/uninstall.sh" "$app_dir/uninstall.sh"
chmod 755 "$app_dir/uninstall.sh"
echo "file - $app_dir/uninstall.sh" >> "$manifest"

desktop_entry() { # $1: Exec arguments after the program, $2: extra lines
    cat <<EOF
[Desktop Entry]
Type=Application
Version=1.0
Name=PeerDesk
GenericName=Remote support
Comment=Open, local-first remote support
Exec="$exe" $1
Icon=network-workgroup
Terminal=true
Categories=Network;RemoteAccess;
$2
EOF
}

mkdir_tracked "$apps_dir"; record_dirs
desktop_entry "start" "Keywords=support;remote;desktop;" > "$apps_dir/peerdesk.desktop"
echo "file - $apps_dir/peerdesk.desktop" >> "$manifest"
desktop_entry "join -- %u" "NoDisplay=true
MimeType=x-scheme-handler/peerdesk;" > "$apps_dir/peerdesk-link.desktop"
echo "file - $apps_dir/peerdesk-link.desktop" >> "$manifest"

# the link handler: update the desktop database, then make ours the default
if [ -e "$apps_dir/mimeinfo.cache" ]; then
    echo "cache existed $apps_dir" >> "$manifest"
else
    echo "cache new $apps_dir" >> "$manifest"
fi
if command -v update-desktop-database >/dev/null; then
    update-desktop-database "$apps_dir"
fi
mimeapps="$config_home/mimeapps.list"
if [ -e "$mimeapps" ]; then
    cp "$mimeapps" "$app_dir/mimeapps.list.before"
    echo "file - $app_dir/mimeapps.list.before" >> "$manifest"
    echo "mimeapps existed $mimeapps" >> "$manifest"
else
    mkdir_tracked "$config_home"; record_dirs
    echo "mimeapps new $mimeapps" >> "$manifest"
fi
XDG_CURRENT_DESKTOP="" xdg-mime default peerdesk-link.desktop x-scheme-handler/peerdesk

if [ "$autostart" = 1 ]; then
    mkdir_tracked "$autostart_dir"; record_dirs
    desktop_entry "" "X-GNOME-Autostart-enabled=true" > "$autostart_dir/peerdesk.desktop"
    echo "file - $autostart_dir/peerdesk.desktop" >> "$manifest"
fi
trap - ERR

echo "PeerDesk is installed: $exe"
echo "  menu entry: $apps_dir/peerdesk.desktop; peerdesk:// links open $apps_dir/peerdesk-link.desktop"
[ "$autostart" = 1 ] && echo "  starts at login: $autostart_dir/peerdesk.desktop"
echo "  uninstall:  $app_dir/uninstall.sh"
