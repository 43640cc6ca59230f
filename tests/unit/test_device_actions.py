"""Every action of the xenbus table has its Device handler, and no handler exists without an action."""
from __future__ import annotations

from xen9p_common.xenbus import TABLE, Action
from xen9p_supervisor.device import Device

PREFIX = "_a_"


def test_every_action_has_a_handler_and_every_handler_an_action():
    handlers = {name[len(PREFIX):] for name in dir(Device) if name.startswith(PREFIX)}
    actions = {a.value for a in Action}
    assert actions - handlers == set(), "actions without a Device._a_<action> handler"
    assert handlers - actions == set(), "Device._a_ handlers no action names"
    assert all(callable(getattr(Device, PREFIX + a)) for a in actions)


def test_every_action_is_used_by_the_table():
    used = {a for _, actions in TABLE.values() for a in actions}
    assert set(Action) - used == set(), "actions no transition performs"
