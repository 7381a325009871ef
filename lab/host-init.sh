#!/bin/bash
# PID 1 of one lab host. `unshare` starts it in fresh net, UTS, mount and pid namespaces; it
# makes the host's private filesystem, then talks to the controller over stdin/stdout:
#   prints "ready"    -> the controller creates eth0 in this namespace and writes "go"
#   prints "started"  -> eth0 is addressed and up, sshd is starting
# and then stays as the host's init, reaping orphans, until it is killed (which ends the host).
# Every value comes from the environment the controller set (LAB_*), never from text it built.
set -euo pipefail
exec 2>>"$LAB_HOST_DIR/init.log"

hostname "$LAB_HOSTNAME"
# Read now: the checkout may live under /tmp, /run or /root, which the mounts below hide.
# shellcheck source=fresh-host.sh
. "$(dirname "$0")/fresh-host.sh"

# A copy of the machine's /run/netns mounts would keep other hosts' namespaces alive. A lazy
# unmount detaches the whole subtree at once (-R would race with netns deleted meanwhile).
if mountpoint -q /run/netns; then umount -l /run/netns; fi

# Private trees: an overlay over the machine's, upper dirs in this host's state dir.
for dir in /etc /var/lib /run /var/log /root /usr/local; do
  key=${dir#/}
  key=${key//\//-}
  mount -t overlay "shoal-$key" \
    -o "lowerdir=$dir,upperdir=$LAB_HOST_DIR/overlay/$key/upper,workdir=$LAB_HOST_DIR/overlay/$key/work" \
    "$dir"
done
mount -t tmpfs -o mode=1777,size=256m,nosuid,nodev shoal-tmp /tmp
hide_machine_shoal_state
# sysfs shows the network namespace of whoever mounts it: mount this host's own.
mount -t sysfs -o nosuid,nodev,noexec shoal-sys /sys

echo "$LAB_HOSTNAME" >/etc/hostname
cp "$LAB_SHARED_DIR/etc-hosts" /etc/hosts
mkdir -p -m 0755 /run/sshd /etc/shoal-lab
install -m 0600 "$LAB_SHARED_DIR/id_ed25519.pub" /etc/shoal-lab/authorized_keys
ip link set lo up

echo ready
read -r go
[ "$go" = go ]

ip addr add "$LAB_ADDRESS" dev eth0
# IPv6 stays a static lab address: no router advertisements taken, nothing forwarded, and no
# duplicate address detection (the lab assigns every address once; DAD would only delay it).
sysctl -q -w net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
  net.ipv6.conf.eth0.accept_ra=0 net.ipv6.conf.all.forwarding=0
ip addr add "$LAB_ADDRESS6" dev eth0 nodad
ip link set eth0 up
/usr/sbin/sshd -f "$LAB_HOST_DIR/sshd_config" -E "$LAB_HOST_DIR/sshd.log"

echo started
exec </dev/null >/dev/null
set +e
trap 'exit 0' TERM
# A blocked `wait` still runs bash's SIGCHLD handler, which reaps every exited child,
# including daemons re-parented to this init.
while true; do
  sleep 86400 &
  wait $!
done
