"""The lab's script that adds a login user: valid shell, the name quoted, safe to run twice."""

from __future__ import annotations

import subprocess

from lab.nonroot import AUTHORIZED_KEYS, add_user_script


def test_the_add_user_script_is_valid_shell_and_quotes_the_name() -> None:
    script = add_user_script("deploy")
    # `id ... ||` first: a user already there is kept, not a failed useradd.
    assert script.startswith("id deploy >/dev/null 2>&1 || useradd --no-create-home ")
    assert "--home-dir /var/lib/deploy" in script and f"chmod 0644 {AUTHORIZED_KEYS}" in script
    odd = add_user_script("x; rm -rf /")
    assert "'x; rm -rf /'" in odd and "'/var/lib/x; rm -rf /'" in odd
    for text in (script, odd):
        subprocess.run(["sh", "-n", "-c", text], check=True)
