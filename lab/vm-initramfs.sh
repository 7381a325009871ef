#!/bin/busybox sh
# PID 1 of the director VM's initramfs (busybox). It loads the modules under /modules (numbered
# in dependency order), mounts the machine's root, shared read-only over 9p, under an overlay
# whose upper layer is a tmpfs (so the guest can write anywhere and the machine sees nothing),
# then hands over to the guest init on that root. The kernel passes SHOAL_VM_INIT (the guest init
# script) and SHOAL_VM_ENV (its settings file) from its command line in the environment.
bb=/bin/busybox
fail() {
  echo "shoal-vm-initramfs: $*" >/dev/console
  # Power off at once, so the controller sees qemu exit; should that fail, init exiting panics
  # the kernel, which reboots, which qemu (-no-reboot) also turns into its exit.
  echo o >/proc/sysrq-trigger
  exit 1
}
$bb mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
$bb mount -t proc proc /proc || fail "mount /proc"
for ko in /modules/*.ko; do
  $bb insmod "$ko" || fail "insmod $ko"
done
$bb mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /lower \
  || fail "mount the 9p root"
$bb mount -t tmpfs -o mode=0755 shoal-vm-rw /rw || fail "mount the tmpfs"
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work shoal-vm-root /newroot \
  || fail "mount the overlay root"
[ -f "/newroot$SHOAL_VM_INIT" ] || fail "no guest init at $SHOAL_VM_INIT"
$bb umount /proc
$bb umount /dev
exec $bb switch_root /newroot /bin/bash "$SHOAL_VM_INIT" "$SHOAL_VM_ENV"
