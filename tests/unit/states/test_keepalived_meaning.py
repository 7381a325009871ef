"""keepalived.conf compared by meaning (states.keepalived_meaning): what counts as the same file."""

from __future__ import annotations

from states.keepalived_meaning import meaning_of, same_meaning
from states.keepalived_syntax import Origin

BASE = """global_defs {
    router_id lvs1
}
vrrp_instance VI_web {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    virtual_ipaddress {
        10.77.0.100/32 dev eth0
    }
}
virtual_server 10.77.0.100 80 {
    delay_loop 2
    lb_algo wlc
    lb_kind DR
    protocol TCP
    real_server 10.77.0.21 80 {
        weight 1
        TCP_CHECK {
            connect_port 80
            connect_timeout 5
        }
    }
}
"""

SAME = """# by hand
virtual_server 10.77.0.100 80 { lvs_sched wlc
  lvs_method DR ! direct routing
  protocol TCP
  delay_loop 2
  real_server 10.77.0.21 80 { TCP_CHECK { } }
}
vrrp_instance VI_web { virtual_ipaddress { 10.77.0.100 }
  priority 150
  virtual_router_id 51
  interface eth0
  state MASTER }
global_defs { router_id lvs1 }
"""


def test_comments_order_aliases_and_defaults_do_not_matter() -> None:
    assert same_meaning(BASE, SAME)
    assert meaning_of(SAME, "x").real_servers == {"tcp 10.77.0.100:80 10.77.0.21:80"}


def test_a_real_difference_is_one() -> None:
    for old, new in (("weight 1", "weight 2"), ("lb_kind DR", "lb_kind NAT"),
                     ("priority 150", "priority 151"), ("VI_web", "web"),
                     ("connect_port 80", "connect_port 8080"), ("delay_loop 2", "delay_loop 3"),
                     ("    protocol TCP\n", "")):
        assert not same_meaning(BASE, BASE.replace(old, new)), old


def test_a_file_with_includes_or_bad_syntax_is_compared_by_digest() -> None:
    assert not same_meaning(BASE + "include /etc/keepalived/conf.d/*.conf\n", BASE)
    assert not same_meaning(BASE + "}\n", BASE)
    try:
        meaning_of("include other.conf\n", "k.conf")
    except ValueError as exc:
        assert str(Origin("k.conf", 1)) in str(exc)
    else:
        raise AssertionError("an include has no meaning here")
