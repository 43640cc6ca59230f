"""xen9pd (discovery, device FSM, worker lifecycle) and the xen9pctl / xen9psim CLIs."""
