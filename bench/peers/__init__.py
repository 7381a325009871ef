"""The peers: the same real-server job written for Ansible and for pyinfra, and how to run them.

The playbook and the deploy are plain files in this directory, written the way a competent user
of each tool would write them. The bench generates only their inputs: the inventory (this lab's
hosts), a vars file (VIP, sysctls) and the two boot-restore files, so all three tools put the
same bytes on the hosts.
"""
