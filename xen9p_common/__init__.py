"""Pure pieces shared by the supervisor, the ring workers and xen9pctl."""
