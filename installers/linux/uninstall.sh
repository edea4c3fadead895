#!/usr/bin/env bash
# Remove what installers/linux/install.sh added, exactly that, newest first.
#
#   ~/.local/share/peerdesk-agent/uninstall.sh
#
# It reads the install's manifest: files and directories it created (a directory is
# removed only when empty, so nothing of yours goes with it), the virtualenv or the
# pipx package, and the peerdesk:// handler in mimeapps.list (the previous default,
# if there was one, is put back; other lines are left alone).
set -euo pipefail

app_dir="${XDG_DATA_HOME:-$HOME/.local/share}/peerdesk-agent"
manifest="$app_dir/manifest"
if [ "${1:-}" = "--manifest" ] && [ $# -ge 2 ]; then manifest="$2"; fi
if [ ! -f "$manifest" ]; then
    echo "uninstall.sh: PeerDesk is not installed here (no $manifest)" >&2
    exit 1
fi
app_dir="$(dirname "$manifest")"
before="$app_dir/mimeapps.list.before"
handler="x-scheme-handler/peerdesk"

restore_mimeapps() { # $1: the file, $2: existed|new
    local file="$1" state="$2" previous="" had_section=0
    [ -f "$file" ] || return 0
    if [ "$state" = existed ] && [ -f "$before" ]; then
        previous="$(awk -v h="$handler=" '/^\[/ {s=($0=="[Default Applications]")}
            s && index($0, h)==1 {print; exit}' "$before")"
        grep -qx '\[Default Applications\]' "$before" && had_section=1
    fi
    awk -v h="$handler=" -v prev="$previous" -v keep="$had_section" '
        /^\[/ { if (held != "" && (keep || body)) printf "%s", held; held=""; body=0
                s=($0=="[Default Applications]")
                if (s) { held=$0 "\n"; next } }
        s && index($0, h)==1 { if (prev != "") { printf "%s%s\n", held, prev; held=""; body=1 } next }
        s && held != "" { if ($0 != "") body=1; held = held $0 "\n"; next }
        { print }
        END { if (held != "" && (keep || body)) printf "%s", held }
    ' "$file" > "$file.peerdesk-tmp"
    if [ "$state" = new ] && ! grep -q '[^[:space:]]' "$file.peerdesk-tmp"; then
        rm -f "$file" "$file.peerdesk-tmp"
    else
        cat "$file.peerdesk-tmp" > "$file"
        rm -f "$file.peerdesk-tmp"
    fi
}

refresh_cache=""
mapfile -t lines < <(tac "$manifest")
for line in "${lines[@]}"; do
    IFS=' ' read -r kind state path <<< "$line"  # "KIND STATE PATH": the path may hold spaces
    case "$kind" in
        file) rm -f -- "$path" ;;
        tree) rm -rf -- "$path" ;;
        dir)
            if [ "$path" = "$app_dir" ]; then rm -f -- "$manifest"; fi
            rmdir -- "$path" 2>/dev/null || true ;;
        pipx) pipx uninstall "$path" >/dev/null || true ;;
        mimeapps) restore_mimeapps "$path" "$state" ;;
        cache)
            if [ "$state" = new ]; then
                rm -f -- "$path/mimeinfo.cache"
            else
                refresh_cache="$path"
            fi ;;
        *) echo "uninstall.sh: skipping unknown manifest line: $line" >&2 ;;
    esac
done
if [ -n "$refresh_cache" ] && command -v update-desktop-database >/dev/null; then
    update-desktop-database "$refresh_cache" || true
fi
if [ -d "$app_dir" ]; then # installed into an app dir that existed before
    rm -f -- "$manifest"
fi
echo "PeerDesk is uninstalled."
