#!/bin/sh
# Trunk post_build hook (Trunk.toml [[hooks]]), run in the staging folder before it becomes
# dist/. POSIX sh + coreutils only, so the build needs nothing else.
#
# 1. sw.js: writes the list of app-shell files (everything built, except sw.js itself) and a
#    version (hash of their contents), so every build installs a fresh service-worker cache.
# 2. index.html: in debug builds (`trunk build`/`trunk serve` without --release) adds the local
#    hosts http://127.0.0.1:* and ws://127.0.0.1:* (mock model host, dev tools) to the
#    Content-Security-Policy's connect-src; QLW_CSP_CONNECT_EXTRA="src1 src2" adds sources in
#    any build. Release builds without that variable keep the committed policy unchanged.
set -eu
dir="${TRUNK_STAGING_DIR:?run by trunk as a post_build hook}"
cd "$dir"

if command -v sha256sum >/dev/null 2>&1; then sha() { sha256sum "$@"; }; else sha() { shasum -a 256 "$@"; }; fi

files=$(find . -type f ! -name sw.js ! -name '*.map' | sed 's|^\./||' | LC_ALL=C sort)
version=$(for f in $files; do sha "$f"; done | sha | cut -c1-16)
list=$(for f in $files; do printf '"%s", ' "$f"; done)
sed -e "s|__BUILD_VERSION__|$version|" -e "s|/\*__PRECACHE__\*/|$list|" sw.js > sw.js.tmp
mv sw.js.tmp sw.js

extra="${QLW_CSP_CONNECT_EXTRA:-}"
if [ "${TRUNK_PROFILE:-release}" = "debug" ]; then
  extra="http://127.0.0.1:* ws://127.0.0.1:* $extra"
fi
if [ -n "$extra" ]; then
  case "$extra" in *[\;\"\'\<\>\|]*) echo "QLW_CSP_CONNECT_EXTRA may not contain ; \" ' < > |" >&2; exit 1;; esac
  sed -e "s|connect-src 'self'|connect-src 'self' $extra|" index.html > index.html.tmp
  mv index.html.tmp index.html
fi
echo "post-build: service worker version $version, $(echo "$files" | wc -l) shell files; CSP extra connect-src: ${extra:-none}"
