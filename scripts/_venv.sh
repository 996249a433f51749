# Sourced (not run) by scripts/test and scripts/demo: make sure .venv exists and
# holds dbqueue installed in editable mode with its dev extras.
#
# The caller must have cd'ed to the repository root. Afterwards $VENV_PYTHON is
# the interpreter to use and .venv/bin is first on PATH (for the dbqueue command).

VENV_DIR=$PWD/.venv  # absolute: callers may cd elsewhere afterwards
VENV_PYTHON=$VENV_DIR/bin/python
# The editable install follows code changes by itself; only pyproject.toml
# (dependencies, entry points, package list) or a new interpreter needs a
# reinstall. The stamp records what the last successful install was made from:
# a tool added to the dev extra reaches every existing .venv at its next run.
VENV_STAMP=$VENV_DIR/.dbqueue-install-stamp
# The commands of the dev extra that scripts/test runs (keep the two in step).
# One missing despite the stamp (uninstalled by hand, say) is a reason to
# reinstall too, rather than a "command not found" halfway through the checks.
VENV_COMMANDS=(pytest ruff mypy lint-imports)

venv_stamp() {
    # What the install depends on: pyproject.toml and the interpreter's version.
    { cat pyproject.toml; "$VENV_PYTHON" -c 'import sys; print(sys.version)'; } | cksum
}

venv_has_commands() {
    local command
    for command in "${VENV_COMMANDS[@]}"; do
        [[ -x $VENV_DIR/bin/$command ]] || return 1
    done
}

ensure_venv() {
    local python=${PYTHON:-python3}

    # A venv whose interpreter no longer runs (moved repository, removed Python)
    # cannot be repaired in place; it is only a cache, so build it again.
    if [[ -e $VENV_DIR ]] && ! "$VENV_PYTHON" -c '' 2>/dev/null; then
        echo "$VENV_DIR is broken (its python does not run); creating it again" >&2
        rm -rf "$VENV_DIR"
    fi

    if [[ ! -e $VENV_DIR ]]; then
        if ! command -v "$python" >/dev/null; then
            echo "error: $python not found; install Python 3.11+ or set PYTHON=/path/to/python3" >&2
            return 1
        fi
        # Say so up front: pip would otherwise fail later with a less obvious message.
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: dbqueue needs Python 3.11+, but $python is $("$python" -V 2>&1);" \
                 "set PYTHON=/path/to/python3.11" >&2
            return 1
        fi
        echo "Creating $VENV_DIR with $("$python" -V 2>&1)" >&2
        "$python" -m venv "$VENV_DIR"
    fi

    if [[ ! -f $VENV_STAMP || "$(cat "$VENV_STAMP")" != "$(venv_stamp)" ]] ||
        ! venv_has_commands; then
        echo "Installing dbqueue and its dev dependencies into $VENV_DIR" >&2
        # The stamp is written only after pip succeeded, so a failed or
        # interrupted install is retried on the next run.
        rm -f "$VENV_STAMP"
        # pip's output (build backend chatter included) is shown only on failure.
        local log
        if ! log=$("$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check \
                       -e '.[dev]' 2>&1); then
            printf '%s\n' "$log" >&2
            echo "error: pip install -e '.[dev]' failed (output above)" >&2
            return 1
        fi
        venv_stamp >"$VENV_STAMP"
    fi

    # An editable install runs dbqueue from this checkout, whose bytecode
    # nothing compiles ahead (a wheel's install does). Where
    # PYTHONDONTWRITEBYTECODE is set, every worker process, fork server and
    # test subprocess would compile each dbqueue module again as it imports
    # it: a third of a second added to each worker's start. compileall only
    # rewrites what changed, and writes whatever that variable says. A file
    # it cannot compile (a syntax error being fixed) is for the checks that
    # follow to report; here it only costs that file's bytecode.
    local compiled
    if ! compiled=$("$VENV_PYTHON" -m compileall -q dbqueue scripts 2>&1); then
        printf '%s\n' "$compiled" >&2
        echo "warning: some bytecode could not be compiled (above); going on" >&2
    fi

    PATH=$VENV_DIR/bin:$PATH
    export PATH
}
