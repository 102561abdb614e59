#!/usr/bin/env bash
# Fetches a runnable Gerrit into a cache directory, by Maven coordinates only, and prints that directory.
#
#   GERRIT_VERSION      Gerrit release to fetch (default 3.10.2; 3.12+ needs Java 21+)
#   GERRIT_AUTHZ_CACHE  cache root (default $HOME/.cache/gerrit-authz)
#   GERRIT_BC_VERSION   BouncyCastle version for the jar fallback (default 1.72)
#   $1                  optional target directory (default $GERRIT_AUTHZ_CACHE/gerrit-$GERRIT_VERSION)
#
# It first asks for com.google.gerrit:gerrit-war:$VERSION:war. When the registry does not serve the war, it
# falls back to gerrit-plugin-api (the whole server and GerritLauncher) plus gerrit-acceptance-framework
# (pgm.Daemon and pgm.Init) and BouncyCastle, which together run the same server.
#
# The result is the file `launch.args` in the directory: the java arguments, one per line, that stand for
# `gerrit.war`, so that `java $(cat launch.args) init|daemon -d SITE ...` runs Gerrit. It is written last,
# so its presence means the cache is complete and a second run does nothing.
set -euo pipefail

version="${GERRIT_VERSION:-3.10.2}"
bc_version="${GERRIT_BC_VERSION:-1.72}"
cache_root="${GERRIT_AUTHZ_CACHE:-$HOME/.cache/gerrit-authz}"
dir="${1:-$cache_root/gerrit-$version}"
launcher="com.google.gerrit.launcher.GerritLauncher"

if [[ -s "$dir/launch.args" ]]; then
  echo "$dir"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch_gerrit: mvn is needed (apt-get install maven)" >&2; exit 1; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
log="$dir/fetch.log"
: >"$log"

# copy GROUP:ARTIFACT:VERSION[:TYPE] -> $dir/jars/ARTIFACT.TYPE (version stripped). Quiet: Maven's output
# goes to fetch.log and, for the last call, to $last_output. -U: do not trust a cached "not found".
last_output=""
copy() {
  local rc=0
  last_output="$(cd "$dir" && mvn -q -B -U dependency:copy -Dartifact="$1" -DoutputDirectory="$dir/jars" \
    -Dmdep.stripVersion=true -Dmdep.overWriteReleases=true 2>&1)" || rc=$?
  printf '%s\n' "$last_output" >>"$log"
  return "$rc"
}

if copy "com.google.gerrit:gerrit-war:$version:war"; then
  printf '%s\n' -jar "$dir/jars/gerrit-war.war" >"$dir/launch.args.tmp"
else
  echo "fetch_gerrit: gerrit-war:$version is not served; using plugin-api + acceptance-framework jars" >>"$log"
  artifacts=(
    "com.google.gerrit:gerrit-plugin-api:$version"
    "com.google.gerrit:gerrit-acceptance-framework:$version"
    "org.bouncycastle:bcprov-jdk18on:$bc_version"
    "org.bouncycastle:bcpkix-jdk18on:$bc_version"
    "org.bouncycastle:bcpg-jdk18on:$bc_version"
    "org.bouncycastle:bcutil-jdk18on:$bc_version"
  )
  classpath=""
  for coords in "${artifacts[@]}"; do
    if ! copy "$coords"; then
      echo "fetch_gerrit: could not fetch $coords; see $log" >&2
      grep -m 1 -F '[ERROR]' <<<"$last_output" >&2 || true
      exit 1
    fi
    artifact="${coords#*:}"
    classpath+="${classpath:+:}$dir/jars/${artifact%%:*}.jar"
  done
  printf '%s\n' -cp "$classpath" "$launcher" >"$dir/launch.args.tmp"
fi

mv "$dir/launch.args.tmp" "$dir/launch.args"
echo "$dir"
