#!/bin/sh
# The Ascend image's entrypoint: CANN's environment (library paths, ASCEND_* variables) comes from
# its set_env.sh scripts, which a Dockerfile cannot source. `exec` replaces this shell with hotswap,
# so SIGTERM from the runtime reaches the server (PID 1) and it drains and exits 0.
set -e
for env in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnal/atb/set_env.sh; do
    # shellcheck disable=SC1090
    if [ -f "$env" ]; then . "$env"; fi
done
exec hotswap "$@"
