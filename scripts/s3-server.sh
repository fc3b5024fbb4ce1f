#!/usr/bin/env bash
# A one-node Ceph cluster with radosgw on 127.0.0.1: the real S3 server the
# tests and the bench of bucket-backed stores run against (issue 19).
#
#   scripts/s3-server.sh start    start one (or reuse the S3 server already answering on the port)
#   scripts/s3-server.sh stop     stop the cluster this script started from $CABSTORE_S3_BASE (only that one)
#   scripts/s3-server.sh status   exit 0 if an S3 server answers on the port
#
# Environment:
#   CABSTORE_S3_PORT      radosgw's port (default 17480; the tests look at http://127.0.0.1:17480
#                         unless CABSTORE_S3_ENDPOINT says otherwise)
#   CABSTORE_S3_BASE      the cluster's folder (default /tmp/cabstore-s3-$PORT): config, logs, pids, mon data
#   CABSTORE_S3_MEMSTORE  bytes the OSD may keep in memory (default 6 GiB; see below)
#   CABSTORE_S3_STORE     memstore (default) or bluestore (a sparse file of CABSTORE_S3_BLUESTORE bytes, 20 GiB, in the base folder)
#
# The user is testkey / testsecret. Needs the Debian packages radosgw ceph-mon ceph-osd ceph-common
# (Ceph 16): `apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common`.
#
# Why memstore: the tests and the bench measure cabstore, not a disk; an OSD that keeps objects in memory
# starts in a few seconds and serves at memory speed. It holds only what is stored (the device size is a
# cap, not an allocation): the suite stores a few hundred MiB at a time, the bench about 3 GiB (two 1 GiB
# uploads and what they leave for radosgw's GC), so 6 GiB leaves room on a 24 GiB machine. radosgw's GC
# is set to free deleted objects' data within seconds (its default waits two hours), or a memstore fills
# up with what tests deleted. CABSTORE_S3_STORE=bluestore puts the data on disk instead, for a machine
# with little memory.
set -euo pipefail

PORT=${CABSTORE_S3_PORT:-17480}
BASE=${CABSTORE_S3_BASE:-/tmp/cabstore-s3-$PORT}
ENDPOINT=http://127.0.0.1:$PORT

answers() { curl -fs -m 2 "$ENDPOINT/" >/dev/null 2>&1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_of() { cat "$BASE/run/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != Z ]; }

stop() {
  local n p
  for n in rgw osd mon; do p=$(pid_of $n); [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for n in rgw osd mon; do
    for _ in $(seq 1 100); do alive $n || break; sleep 0.1; done
    if alive $n; then kill -9 "$(pid_of $n)" 2>/dev/null || true; fi
  done
}

start() {
  if answers; then
    echo "an S3 server already answers on $ENDPOINT: using it"
    return 0
  fi
  for c in ceph-mon ceph-osd radosgw ceph monmaptool ceph-authtool radosgw-admin curl; do
    command -v $c >/dev/null || { echo "$c not found: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common curl" >&2; exit 1; }
  done
  if port_busy "$PORT"; then echo "port $PORT is taken by something that is not an S3 server" >&2; exit 1; fi
  stop # what is left of an earlier cluster from this folder
  # The monitor's port: the first free one from 16789 (another cluster, such as a shared one, may hold 16789).
  local MON=16789
  while port_busy $MON; do MON=$((MON + 1)); done
  rm -rf "$BASE"
  mkdir -p "$BASE/run" "$BASE/log" "$BASE/mon/ceph-a" "$BASE/osd/ceph-0"
  local FSID C
  FSID=$(cat /proc/sys/kernel/random/uuid)
  C=$BASE/ceph.conf
  cat >"$C" <<EOF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON
mon initial members = a
ms bind msgr2 = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
run dir = $BASE/run
admin socket = $BASE/run/\$name.asok
log file = $BASE/log/\$name.log
keyring = $BASE/keyring
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
[mon]
mon data = $BASE/mon/ceph-\$id
mon allow pool delete = true
[osd]
osd data = $BASE/osd/ceph-\$id
# The Ceph 16 start-up race: on boot an OSD sends 'osd crush create-or-move' and 'osd crush
# set-device-class' to the monitor, and may send them before it has learnt the cluster's fsid (a zero
# fsid): the monitor answers 'wrong fsid' and the OSD never boots. With these off it sends neither;
# start() puts osd.0 in the CRUSH map itself, before the OSD starts.
osd crush update on start = false
osd class update on start = false
osd objectstore = ${CABSTORE_S3_STORE:-memstore}
memstore device bytes = ${CABSTORE_S3_MEMSTORE:-6442450944}
bluestore block create = true
bluestore block size = ${CABSTORE_S3_BLUESTORE:-21474836480}
bluestore fsck on mount = false
bdev enable discard = false
osd memory target = 536870912
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw dns name = localhost
rgw thread pool size = 64
rgw init timeout = 60
# Free the data of deleted objects within seconds (default: after two hours).
rgw gc obj min wait = 5
rgw gc processor period = 10
EOF
  export CEPH_CONF=$C
  ceph-authtool --create-keyring "$BASE/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$FSID" --add a "v1:127.0.0.1:$MON" "$BASE/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$BASE/monmap" --keyring "$BASE/keyring"
  ceph-mon -f -i a >"$BASE/log/mon.out" 2>&1 &
  echo $! >"$BASE/run/mon.pid"
  local OSD_UUID up
  OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  ceph --connect-timeout 30 osd new "$OSD_UUID" >/dev/null # osd.0
  # By hand, before the OSD boots (see the race above).
  ceph --connect-timeout 30 osd crush add osd.0 1.0 root=default >/dev/null 2>&1 || { echo "ceph osd crush add failed; see $BASE/log" >&2; stop; exit 1; }
  ceph-osd -i 0 --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1
  ceph-osd -f -i 0 >"$BASE/log/osd.out" 2>&1 &
  echo $! >"$BASE/run/osd.pid"
  up=0
  for _ in $(seq 1 200); do timeout 10 ceph osd stat 2>/dev/null | grep -q '1 up' && { up=1; break; }; sleep 0.3; done
  [ $up = 1 ] || { echo "the OSD did not come up; see $BASE/log/osd.0.log" >&2; stop; exit 1; }
  radosgw -f -n client.rgw.a >"$BASE/log/rgw.out" 2>&1 &
  echo $! >"$BASE/run/rgw.pid"
  up=0
  for _ in $(seq 1 300); do answers && { up=1; break; }; sleep 0.3; done
  [ $up = 1 ] || { echo "radosgw did not come up; see $BASE/log/client.rgw.a.log" >&2; stop; exit 1; }
  timeout 60 radosgw-admin user create --uid=test --display-name=test --access-key=testkey --secret=testsecret >/dev/null
  echo "radosgw on $ENDPOINT (access key testkey, secret testsecret; folder $BASE)"
}

case "${1:-}" in
  start) start ;;
  stop)
    stop
    rm -rf "$BASE"
    ;;
  status)
    if answers; then
      if alive rgw; then echo "$ENDPOINT: radosgw started from $BASE"; else echo "$ENDPOINT: an S3 server (not started from $BASE)"; fi
    else
      echo "$ENDPOINT: no S3 server answers"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
