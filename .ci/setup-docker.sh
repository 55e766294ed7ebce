#!/usr/bin/env bash
# Brings up what the Docker tests need: an engine that answers, with gVisor (`runsc`) registered, and
# the kernel image built offline (reused when it is up to date).
#
# Where no engine answers and we are root with apt-get (CI, a fresh machine), it installs Debian's
# docker.io, runsc and debootstrap, registers runsc in /etc/docker/daemon.json and starts dockerd in
# the background. On a laptop without Docker and without CI set it only warns: the Docker tests then
# skip. With CI=true every failure here fails the run, because the Docker tests must not skip there.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
CI="${CI:-}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/rlm-dockerd.log}"

say() { echo "setup-docker: $*" >&2; }
give_up() {
  if [ "$CI" = "true" ]; then
    say "ERROR: $*"
    exit 1
  fi
  say "WARNING: $* -- the Docker tests will be skipped (set CI=true to make this an error)."
  exit 0
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

wait_for_engine() {
  local i
  for i in $(seq 1 300); do
    engine_answers && return 0
    sleep 0.2
  done
  return 1
}

# Write daemon.json with runsc registered, keeping whatever else is configured there already.
register_runsc() {
  mkdir -p /etc/docker
  "$PYTHON" - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    config = json.loads(text) if text else {}
config.setdefault("runtimes", {})["runsc"] = {
    "path": "/usr/bin/runsc",
    # gVisor refuses to start a container without --network=none when the host netns is not used,
    # and without --host-uds=all the box cannot reach the controller's socket on its bind mount.
    "runtimeArgs": ["--network=none", "--host-uds=all"],
}
with open(path, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
PY
}

start_engine() {
  if [ "$(id -u)" != "0" ]; then
    give_up "no Docker engine answers and this is not root, so one cannot be installed here. Start Docker (e.g. 'sudo systemctl start docker') and run again."
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v runsc >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      give_up "no Docker engine answers and apt-get is not available to install one. Install Docker and gVisor (runsc), then run again."
    fi
    say "installing docker.io, runsc and debootstrap from Debian's packages"
    apt-get update -qq || give_up "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io runsc debootstrap >/tmp/rlm-apt.log 2>&1 \
      || { tail -20 /tmp/rlm-apt.log >&2; give_up "apt-get install docker.io runsc debootstrap failed (log: /tmp/rlm-apt.log)"; }
  fi
  register_runsc || give_up "could not write /etc/docker/daemon.json"
  if pgrep -x dockerd >/dev/null 2>&1; then
    say "dockerd is running but does not answer yet; waiting"
  else
    say "starting dockerd (log: $DOCKERD_LOG)"
    nohup setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  wait_for_engine || { tail -20 "$DOCKERD_LOG" >&2; give_up "dockerd did not answer within 60 s (log: $DOCKERD_LOG)"; }
}

if ! command -v docker >/dev/null 2>&1 && ! command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" != "0" ]; then
  give_up "Docker is not installed"
fi

if engine_answers; then
  say "a Docker engine answers"
else
  start_engine
fi

has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

# An engine that runs without gVisor registered: register it and have dockerd reload its configuration
# (SIGHUP reloads runtimes without stopping any container).
if ! has_runsc && [ "$(id -u)" = "0" ] && command -v runsc >/dev/null 2>&1 && [ -s /var/run/docker.pid ]; then
  say "registering runsc with the running engine"
  if register_runsc && kill -HUP "$(cat /var/run/docker.pid)" 2>/dev/null; then
    for i in $(seq 1 50); do has_runsc && break; sleep 0.1; done
  fi
fi

if ! has_runsc; then
  if [ "$CI" = "true" ]; then
    say "ERROR: the engine has no 'runsc' runtime registered; the gVisor tests need it. Register it in /etc/docker/daemon.json (see the README's Docker section) and restart the engine."
    exit 1
  fi
  say "WARNING: the engine has no 'runsc' runtime registered: the gVisor tests will be skipped."
fi

say "building the kernel image (offline; reused when up to date)"
"$PYTHON" -m sandboxes.backends.docker.cli build-image --offline || give_up "the kernel image could not be built"
say "ready"
