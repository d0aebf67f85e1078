# Sourced by ./run and ./test: create .venv if missing and (re)install the
# project when pyproject.toml or the wanted extras changed.
# Usage: ensure_venv [EXTRAS]   e.g. ensure_venv test
ensure_venv() {
    local extras="${1:-}"
    local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local venv="$root/.venv"
    local py="${RAYFLEET_PYTHON:-}"
    if [ -z "$py" ]; then
        for c in python3.11 python3.12 python3.10 python3; do
            if command -v "$c" >/dev/null 2>&1; then py="$c"; break; fi
        done
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv with $py"
        "$py" -m venv "$venv" || { echo "error: could not create a venv with $py (install python3-venv)" >&2; return 1; }
    fi
    local hash; hash="$(sha256sum < "$root/pyproject.toml" | cut -c1-16)"
    local stamp="$venv/.rayfleet-installed"
    # Installed already for this pyproject.toml with these extras (any extras cover "")?
    if ! grep -qx "$hash-$extras" "$stamp" 2>/dev/null && \
       ! { [ -z "$extras" ] && grep -q "^$hash-" "$stamp" 2>/dev/null; }; then
        echo "==> installing rayfleet${extras:+[$extras]} into $venv (first time: a few minutes)"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
        # torch first, pinned: the CPU build; nothing may pull another torch.
        "$venv/bin/python" -m pip install -q "torch==2.13.0" || return 1
        "$venv/bin/python" -m pip install -q -e "$root${extras:+[$extras]}" || return 1
        echo "$hash-$extras" >> "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
}
