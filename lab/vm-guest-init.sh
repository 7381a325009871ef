#!/bin/bash
# PID 1 of the director VM once its root is mounted (see vm-initramfs.sh): the guest is the
# machine's own filesystem read-only, with a tmpfs overlay on top, so binaries (sshd, ipvsadm,
# keepalived, python3) are the machine's and every write stays in the guest's memory.
# It mirrors host-init.sh for a namespace host: hostname, /etc/hosts, eth0 with the lab address,
# the lab's client key authorised for root, sshd with this host's lab host key. Then it reports
# on the console and stays as the guest's init, reaping orphans.
# Settings come from the file named by $1, which the controller wrote with every value quoted.
set -euo pipefail
# shellcheck source=/dev/null
. "$1"
# Read now: the checkout may live under /tmp, /run or /root, which the mounts below hide.
# shellcheck source=fresh-host.sh
. "$(dirname "$0")/fresh-host.sh"

say() { echo "shoal-vm: $*" >/dev/console; }
trap 'say "guest init failed at line $LINENO"; echo o >/proc/sysrq-trigger' ERR

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev
# The kernel's modules, for modprobe here and for the kernel's own module requests (ip_vs).
# Bound before the tmpfs mounts below: the checkout (and its .cache) may live under /tmp,
# /run or /root, which those mounts hide.
mkdir -p /lib/modules
mount --bind -o ro "$VM_MODULES_DIR" /lib/modules
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 shoal-shm /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 shoal-run /run
mount -t tmpfs -o nosuid,nodev,mode=1777 shoal-tmp /tmp
# The machine's /root (shell start-up files, tool caches) is not the guest's business.
mount -t tmpfs -o mode=0700 shoal-root /root
hide_machine_shoal_state
exec </dev/null >/dev/console 2>&1

echo /sbin/modprobe >/proc/sys/kernel/modprobe
modprobe virtio_net
modprobe virtio_rng 2>/dev/null || true  # entropy for sshd; the guest boots without it too

hostname "$VM_HOSTNAME"
echo "$VM_HOSTNAME" >/etc/hostname
cp "$VM_SHARED_DIR/etc-hosts" /etc/hosts
# sshd (UsePAM no) refuses a locked account even for key logins: unlock root, in the guest only.
sed -i -E 's/^root:![^:]*:/root:*:/' /etc/shadow
mkdir -p -m 0755 /run/sshd /etc/shoal-lab /var/log
install -m 0600 "$VM_SHARED_DIR/id_ed25519.pub" /etc/shoal-lab/authorized_keys

# Like a namespace host: the lab's addresses and no default route, so the guest reaches nothing
# off the lab; IPv6 static (no router advertisements taken, nothing forwarded, no DAD delay).
sysctl -q -w net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
  net.ipv6.conf.eth0.accept_ra=0 net.ipv6.conf.all.forwarding=0
ip link set lo up
ip addr add "$VM_ADDRESS" dev eth0
ip addr add "$VM_ADDRESS6" dev eth0 nodad
ip link set eth0 up
/usr/sbin/sshd -f "$VM_HOST_DIR/sshd_config" -E /var/log/sshd.log

say "ready $VM_HOSTNAME $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"
trap - ERR
set +e
trap 'exit 0' TERM
while true; do
  sleep 86400 &
  wait $!
done
