# Sourced by host-init.sh and vm-guest-init.sh once the host's private trees are in place (an
# overlay or tmpfs over the machine's). A lab host starts as a host shoal has never touched,
# whatever shoal or an operator did on this machine before: shoal's own files and keepalived's
# configuration in the machine's trees are hidden from it. Removing them here only whites them
# out in the host's private layer; the machine's copies are never written.
hide_machine_shoal_state() {
  local path
  for path in /var/lib/shoal /etc/keepalived/keepalived.conf \
              /etc/sysctl.d/*shoal* /etc/systemd/system/shoal* /etc/systemd/system/*/shoal* \
              /usr/local/sbin/shoal*; do
    # An unmatched glob stays literal: -e is false for it, and for a path that is not there.
    if [ -e "$path" ] || [ -L "$path" ]; then rm -rf -- "$path"; fi
  done
}
