#!/bin/sh
# Installs the Debian packages given as arguments that are missing, when run as root on Debian.
# Never fails the build: a part whose package is missing says so when it is used (and its
# tests skip with the reason).
missing=""
for package in "$@"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $package"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "note: not installing$missing (needs root and apt-get); the parts that use them are off" >&2
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
attempt=1
while [ $attempt -le 5 ]; do
	# The package lock may be held by another apt run for a while: wait and retry.
	if apt-get install -y -qq $missing >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $missing >/dev/null 2>&1; }; then
		exit 0
	fi
	echo "apt-get could not install$missing (attempt $attempt); retrying" >&2
	attempt=$((attempt + 1))
	sleep 10
done
echo "warning: could not install$missing" >&2
exit 0
